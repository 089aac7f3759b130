"""Read-side queries of telemetry: log search and resource timelines (Elasticsearch), PromQL.

Shared by the dashboard and `fedopsctl`, so both ask exactly the same questions.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any


class QueryError(RuntimeError):
    """A telemetry backend refused or could not be reached; the message is fit to show."""


def _http_json(url: str, body: Any = None, timeout: float = 10) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except OSError as err:
        raise QueryError(f"{url.split('?')[0]}: {err}") from None


LEVELS = ("debug", "info", "warning", "error", "critical")
# Transport noise: Flower's ServerApp polls its SuperLink over HTTP and httpx logs every request at INFO
# (about 90 % of a ServerApp's lines). Kept out of INFO and below unless asked for.
TRANSPORT_LOGGERS = ("httpx", "httpcore", "uvicorn.access")
ACCESS_STREAM = "access"  # the dashboard's own access log (labels.stream), apart from the platform's logs


def search_logs(es_url: str, client_id: str = "", run_id: str = "", round_number: int | None = None,
                level: str = "", text: str = "", size: int = 200, *, transport: bool = False,
                stream: str = "platform", oldest_first: bool = False, after: str = "") -> list[dict[str, Any]]:
    """Logs of every actor, newest first (``oldest_first`` for reading a round in order), filtered by
    client, run, round, level **or above**, free text, and ``after`` a timestamp (a live tail).
    ``stream``: ``platform`` (everything but the dashboard's access log), ``access`` (only that) or
    ``all``; ``transport``: keep the transport noise at INFO and below."""
    if level and level not in LEVELS:
        raise QueryError(f"level: unknown level {level!r} (one of {', '.join(LEVELS)})")
    filters: list[dict[str, Any]] = []
    must_not: list[dict[str, Any]] = []
    for field, value in (("fedops.client.id", client_id), ("fedops.run.id", run_id)):
        if value:
            filters.append({"term": {field: value}})
    if level:
        filters.append({"terms": {"log.level": list(LEVELS[LEVELS.index(level):])}})
    if round_number is not None:
        filters.append({"term": {"fedops.round": round_number}})
    if after:
        filters.append({"range": {"@timestamp": {"gt": after}}})
    if stream == ACCESS_STREAM:
        filters.append({"term": {"labels.stream": ACCESS_STREAM}})
    elif stream == "platform":
        must_not.append({"term": {"labels.stream": ACCESS_STREAM}})
    if not transport:
        must_not.append({"bool": {"filter": [{"terms": {"log.logger": list(TRANSPORT_LOGGERS)}},
                                             {"terms": {"log.level": ["debug", "info"]}}]}})
    must = [{"match": {"message": {"query": text, "operator": "and"}}}] if text else []
    body = {"size": size, "sort": [_by_time("asc" if oldest_first else "desc")],
            "query": {"bool": {"filter": filters, "must": must, "must_not": must_not}}}
    hits = _http_json(f"{es_url}/fedops-logs/_search", body)["hits"]["hits"]
    return [hit["_source"] for hit in hits]


def _by_time(order: str) -> dict[str, Any]:
    """Sort by ``@timestamp`` to the microsecond the actors log: the index templates map it as
    ``date_nanos`` (as ``date``, Elasticsearch keeps milliseconds, and lines of one millisecond came
    back in any order, and a live tail's "after" lost lines logged in the last line's millisecond);
    ``numeric_type`` also sorts indices made by an older template, which hold ``date``."""
    return {"@timestamp": {"order": order, "numeric_type": "date_nanos"}}


def resource_timeline(es_url: str, client_id: str, size: int = 500, since: str = "") -> list[dict[str, Any]]:
    """A client's latest resource samples (at most ``size``, from ``since`` on when given), oldest first."""
    query: dict[str, Any] = {"bool": {"filter": [{"term": {"fedops.client.id": client_id}}]}}
    if since:
        query["bool"]["filter"].append({"range": {"@timestamp": {"gte": since}}})
    body = {"size": size, "sort": [_by_time("desc")], "query": query}
    hits = _http_json(f"{es_url}/fedops-resources/_search", body)["hits"]["hits"]
    return [hit["_source"] for hit in reversed(hits)]


def prometheus_query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant PromQL query's result vector."""
    answer = _http_json(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    if answer.get("status") != "success":
        raise QueryError(f"Prometheus: {answer.get('error', answer)}")
    return answer["data"]["result"]
