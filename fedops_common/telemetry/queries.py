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


def search_logs(es_url: str, client_id: str = "", run_id: str = "", round_number: int | None = None,
                level: str = "", text: str = "", size: int = 200) -> list[dict[str, Any]]:
    """Newest first: logs of every actor filtered by client, run, round, level and free text."""
    filters: list[dict[str, Any]] = []
    for field, value in (("fedops.client.id", client_id), ("fedops.run.id", run_id), ("log.level", level)):
        if value:
            filters.append({"term": {field: value}})
    if round_number is not None:
        filters.append({"term": {"fedops.round": round_number}})
    must = [{"match": {"message": {"query": text, "operator": "and"}}}] if text else []
    body = {"size": size, "sort": [{"@timestamp": "desc"}], "query": {"bool": {"filter": filters, "must": must}}}
    hits = _http_json(f"{es_url}/fedops-logs/_search", body)["hits"]["hits"]
    return [hit["_source"] for hit in hits]


def resource_timeline(es_url: str, client_id: str, size: int = 500) -> list[dict[str, Any]]:
    """A client's latest resource samples, oldest first."""
    body = {"size": size, "sort": [{"@timestamp": "desc"}], "query": {"term": {"fedops.client.id": client_id}}}
    hits = _http_json(f"{es_url}/fedops-resources/_search", body)["hits"]["hits"]
    return [hit["_source"] for hit in reversed(hits)]


def prometheus_query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant PromQL query's result vector."""
    answer = _http_json(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    if answer.get("status") != "success":
        raise QueryError(f"Prometheus: {answer.get('error', answer)}")
    return answer["data"]["result"]
