"""`fedopsctl clients ...`: devices, their state, data status and resources."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from google.protobuf import json_format

from fedops_cli.columns import ID, TEXT, Column, print_table
from fedops_cli.context import S, Table, call, console, emit, fail, say
from fedops_cli.telemetry import ElasticsearchUrl, print_rows, require_elasticsearch
from fedops_common import words
from fedops_common.proto import control_pb2

clients_app = typer.Typer(help="Enrolled client devices.", no_args_is_help=True)


def render_clients(resp: control_pb2.ListClientsResponse) -> None:
    """The page (the service pages by client id, so pages stay stable while clients join), newest
    registration first; ids in full; the reason wraps."""
    clients = sorted(resp.clients, key=lambda c: c.registered_at.ToDatetime(), reverse=True)
    print_table("Clients", [Column("id", ID), Column("state", TEXT), Column("heartbeat", TEXT, 3),
                            Column("device", TEXT, 4), Column("run", ID, 2), Column("tasks", TEXT, 5),
                            Column("why", TEXT, 1)],
                [[c.id, words.client_state(S.ClientState.Name(c.state)),
                  f"{words.duration(c.heartbeat_age_s)} ago" if c.heartbeat_age_s >= 0 else "-", c.device.hostname,
                  c.current_run_id, ", ".join(c.enrolled_task_ids), c.state_reason] for c in clients])


class StateName(StrEnum):
    """Client states a listing can be filtered by (offline: holding no session now)."""

    online = "online"
    training = "training"
    finished = "finished"
    failed = "failed"
    offline = "offline"


@clients_app.command("list")
def clients_list(
    task: Annotated[str, typer.Option(help="only clients enrolled in this task")] = "",
    state: Annotated[StateName | None, typer.Option(help="only clients in this state")] = None,
    page_size: Annotated[int, typer.Option(help="clients per page, 1-1000 (0: the service's default, 100)")] = 0,
    page_token: Annotated[str, typer.Option(help="the page after this one (printed under the previous page)")] = "",
) -> None:
    """List clients with state and heartbeat age, one page at a time (by client id)."""
    request = control_pb2.ListClientsRequest(
        task_id=task, page_size=page_size, page_token=page_token,
        state=S.ClientState.Value(f"CLIENT_STATE_{state.value.upper()}") if state else S.CLIENT_STATE_UNSPECIFIED)
    response = call("ListClients", request)
    emit(response, render_clients)
    if response.next_page_token:
        say(f"{len(response.clients)} of {response.total_size} clients; next page: --page-token "
            f"{response.next_page_token}", stderr=True)


@clients_app.command("show")
def clients_show(client_id: str) -> None:
    """Show one client."""
    emit(call("GetClient", control_pb2.GetClientRequest(client_id=client_id)),
         lambda c: render_clients(control_pb2.ListClientsResponse(clients=[c])))


def render_data_status(response: control_pb2.ListDataStatusResponse) -> None:
    table = Table("client", "run", "round", "reported", "samples", "features", "missing", "labels", "schema",
                  "freshness", title="Data status (aggregates only)")
    for r in response.reports:
        summary = json_format.MessageToDict(r.summary)
        labels = summary.get("label_histogram", {})
        table.add_row(r.client_id, r.run_id or "(enrolment)", str(r.round), r.reported_at.ToJsonString()[:19],
                      str(int(summary.get("sample_count", 0))), str(int(summary.get("feature_count", 0))),
                      f"{summary.get('missing_ratio', 0):.1%}",
                      " ".join(f"{k}:{int(v)}" for k, v in sorted(labels.items())[:10]),
                      str(summary.get("schema_hash", "")), f"{summary.get('freshness_s', -1):.0f}s")
    console.print(table)


@clients_app.command("data-status")
def clients_data_status(
    client: Annotated[str, typer.Option(help="only this client")] = "",
    run: Annotated[str, typer.Option(help="only reports made for this run")] = "",
    latest: Annotated[bool, typer.Option("--latest", help="one report per client: the newest")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """Data status per client and per run: sample count, label histogram, missing values, schema, freshness."""
    request = control_pb2.ListDataStatusRequest(client_id=client, run_id=run, latest_only=latest, limit=limit)
    emit(call("ListDataStatus", request), render_data_status)


@clients_app.command("resources")
def clients_resources(
    client_id: str,
    elasticsearch_url: ElasticsearchUrl = "",
    size: Annotated[int, typer.Option(min=1, max=10_000, help="latest samples")] = 60,
) -> None:
    """A client's latest resource samples (CPU, memory, RSS), with run, round and model version."""
    from fedops_common.telemetry.queries import QueryError, resource_timeline

    try:
        samples = resource_timeline(require_elasticsearch(elasticsearch_url), client_id, size)
    except QueryError as err:
        fail(str(err), 1)
    rows = [{"time": s.get("@timestamp", ""), "cpu": s.get("host.cpu.usage"), "memory": s.get("system.memory.used.pct"),
             "rss_bytes": s.get("process.memory.rss"), "run": s.get("fedops.run.id", ""),
             "round": s.get("fedops.round", 0), "model_version": s.get("fedops.model.version", 0)} for s in samples]
    print_rows(rows, ["time", "cpu", "memory", "rss_bytes", "run", "round", "model_version"],
                f"resources of {client_id}")
