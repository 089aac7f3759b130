"""`fedopsctl logs search` and `fedopsctl metrics`: the telemetry in Elasticsearch and Prometheus."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from fedops_cli.columns import ID, NUMBER, TEXT, Column, print_table
from fedops_cli.context import Ctx, Output, Table, console, fail

logs_app = typer.Typer(help="Logs of every actor, searched in Elasticsearch.", no_args_is_help=True)
ElasticsearchUrl = Annotated[str, typer.Option(envvar="FEDOPS_ELASTICSEARCH_URL", help="Elasticsearch URL")]


def require_elasticsearch(url: str) -> str:
    if not url:
        fail("no Elasticsearch: pass --elasticsearch-url or set FEDOPS_ELASTICSEARCH_URL")
    return url


def print_rows(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    if Ctx.output == Output.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console.print(table)


@logs_app.command("search")
def logs_search(
    elasticsearch_url: ElasticsearchUrl = "",
    client: Annotated[str, typer.Option(help="client id")] = "",
    run: Annotated[str, typer.Option(help="run id")] = "",
    round_number: Annotated[int | None, typer.Option("--round", min=0, help="round (oldest first)")] = None,
    level: Annotated[str, typer.Option(help="this level or above: debug, info, warning, error, critical")] = "",
    text: Annotated[str, typer.Option(help="words the message must contain")] = "",
    size: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    transport: Annotated[bool, typer.Option(help="include Flower's HTTP polling lines (httpx) at INFO")] = False,
    stream: Annotated[str, typer.Option(help="platform, access (the dashboard's access log) or all")] = "platform",
) -> None:
    """Log lines of every actor, newest first (one round: oldest first), filtered by client, run, round,
    level or above, and text. Transport noise and the dashboard's access log are left out by default."""
    from fedops_common.telemetry.queries import LEVELS, QueryError, search_logs

    if level and level not in LEVELS:
        raise typer.BadParameter(f"unknown level {level!r} (one of {', '.join(LEVELS)})", param_hint="--level")
    if stream not in ("platform", "access", "all"):
        raise typer.BadParameter(f"unknown stream {stream!r} (platform, access or all)", param_hint="--stream")
    try:
        hits = search_logs(require_elasticsearch(elasticsearch_url), client, run, round_number, level, text, size,
                           transport=transport, stream=stream, oldest_first=round_number is not None)
    except QueryError as err:
        fail(str(err), 1)
    rows = [{"time": h.get("@timestamp", ""), "level": h.get("log.level", ""), "service": h.get("service.name", ""),
             "client": h.get("fedops.client.id", ""), "run": h.get("fedops.run.id", ""),
             "round": "" if h.get("fedops.round") is None else h["fedops.round"], "message": h.get("message", "")}
            for h in hits]
    if Ctx.output == Output.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    print_table(f"{len(rows)} log lines", [
        Column("time", ID), Column("level", TEXT), Column("client", ID, 3), Column("run", ID, 4),
        Column("round", NUMBER, 2), Column("service", TEXT, 5), Column("message", TEXT)],
        [[r["time"][5:19].replace("T", " "), r["level"], r["client"], r["run"], str(r["round"]), r["service"],
          r["message"]] for r in rows])


PLATFORM_METRICS = {"rounds_completed": "sum(fedops_rounds_completed_total)",
                    "scrape_targets_up": 'sum(up{job=~"fedops-.*"})',
                    "client_failures": "sum(fedops_client_failures_total)"}


def platform_metrics(
    prometheus_url: Annotated[str, typer.Option(envvar="FEDOPS_PROMETHEUS_URL", help="Prometheus URL")] = "",
    query: Annotated[str, typer.Option(help="any PromQL instead of the platform summary")] = "",
) -> None:
    """Platform metrics from Prometheus (what the dashboard's Overview shows), or any PromQL query."""
    from fedops_common.telemetry.queries import QueryError, prometheus_query

    if not prometheus_url:
        fail("no Prometheus: pass --prometheus-url or set FEDOPS_PROMETHEUS_URL")
    queries = {"query": query} if query else PLATFORM_METRICS
    rows = []
    try:
        for name, promql in queries.items():
            for sample in prometheus_query(prometheus_url, promql) or [{"metric": {}, "value": [0, "0"]}]:
                rows.append({"name": name, "labels": ",".join(f"{k}={v}" for k, v in sorted(sample["metric"].items())),
                             "value": float(sample["value"][1])})
    except QueryError as err:
        fail(str(err), 2 if "bad_data" in str(err) or "400" in str(err) else 1)
    print_rows(rows, ["name", "labels", "value"], "Platform metrics")
