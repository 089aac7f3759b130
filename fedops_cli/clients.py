"""`fedopsctl clients ...`: devices, their state, data status and resources."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated

import typer
from google.protobuf import json_format

from fedops_cli.columns import ID, NUMBER, TEXT, Column, print_table
from fedops_cli.context import (
    S,
    Table,
    call,
    console,
    emit,
    fail,
    parse_label_pairs,
    parse_selector_option,
    say,
)
from fedops_cli.telemetry import ElasticsearchUrl, print_rows, require_elasticsearch
from fedops_common import words
from fedops_common.proto import common_pb2, control_pb2

clients_app = typer.Typer(help="Enrolled client devices.", no_args_is_help=True)


def client_name(client: common_pb2.Client) -> str:
    """The name given at enrolment; without one (no enrolment token, --no-auth) the device id, which
    tells devices on one host apart where the host name does not."""
    return client.name or client.device.device_id


def label_lines(labels: Mapping[str, str]) -> str:
    """One ``key=value`` per line: a wrapped cell then never splits a label in two."""
    return "\n".join(f"{key}={labels[key]}" for key in sorted(labels))


def render_clients(resp: control_pb2.ListClientsResponse) -> None:
    """The page as the service orders it (newest registration first, across pages); ids in full; the
    name, labels and reason wrap."""
    print_table("Clients (newest first)", [
        Column("id", ID), Column("name", TEXT, 2), Column("state", TEXT), Column("labels", TEXT, 1),
        Column("heartbeat", TEXT, 5), Column("host", TEXT, 6), Column("run", ID, 4), Column("tasks", TEXT, 7),
        Column("why", TEXT, 3)],
        [[c.id, client_name(c), words.client_state(S.ClientState.Name(c.state)), label_lines(c.labels),
          f"{words.duration(c.heartbeat_age_s)} ago" if c.heartbeat_age_s >= 0 else "-", c.device.hostname,
          c.current_run_id, ", ".join(c.enrolled_task_ids), c.state_reason] for c in resp.clients])


class StateName(StrEnum):
    """Client states a listing can be filtered by (offline: holding no session now)."""

    online = "online"
    training = "training"
    finished = "finished"
    failed = "failed"
    offline = "offline"


SelectOption = Annotated[str, typer.Option("--select", help="only clients with these labels: key=value,key=value")]


@clients_app.command("list")
def clients_list(
    task: Annotated[str, typer.Option(help="only clients enrolled in this task")] = "",
    state: Annotated[StateName | None, typer.Option(help="only clients in this state")] = None,
    select: SelectOption = "",
    page_size: Annotated[int, typer.Option(help="clients per page, 1-1000 (0: the service's default, 100)")] = 0,
    page_token: Annotated[str, typer.Option(help="the page after this one (printed under the previous page)")] = "",
) -> None:
    """List clients with name, state, labels and heartbeat age, newest first, one page at a time."""
    request = control_pb2.ListClientsRequest(
        task_id=task, page_size=page_size, page_token=page_token, labels=parse_selector_option(select),
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


@clients_app.command("label")
def clients_label(
    client_id: str,
    labels: Annotated[list[str] | None, typer.Argument(help="key=value to set (overwrites the key's value)")] = None,
    remove: Annotated[list[str] | None, typer.Option(help="label key to remove (repeatable)")] = None,
) -> None:
    """Set or remove labels of a client. An operator's label stays until someone sets it again: an agent
    that reconnects does not undo it (a changed agent config does)."""
    request = control_pb2.SetClientLabelsRequest(client_id=client_id, labels=parse_label_pairs(labels, "LABELS"),
                                                 remove_keys=remove or [])
    emit(call("SetClientLabels", request), lambda c: render_clients(control_pb2.ListClientsResponse(clients=[c])))


def render_groups(by: str, response: control_pb2.CountClientsResponse) -> None:
    """One row per label value: clients by state (as the dashboard's group sizes)."""
    rows = []
    for group in response.groups:
        counts = {words.client_state(S.ClientState.Name(c.state)): c.count for c in group.states}
        name = "(no label)" if group.unlabelled else group.value or '""'
        rows.append([name, *(str(counts.get(state, 0)) for state in words.CLIENT_STATES), str(group.total)])
    print_table(f"Clients by {by or 'state'}", [Column(by or "clients", TEXT), *(Column(state, NUMBER)
                                                for state in words.CLIENT_STATES), Column("total", NUMBER)], rows)
    if response.groups_left_out:
        say(f"{response.groups_left_out} smaller groups left out", stderr=True)


@clients_app.command("groups")
def clients_groups(
    by: Annotated[str, typer.Option(help="label key: one row per value")] = "",
    task: Annotated[str, typer.Option(help="only clients enrolled in this task")] = "",
    select: SelectOption = "",
) -> None:
    """How many clients are online, training, finished, failed or offline, per value of a label."""
    request = control_pb2.CountClientsRequest(task_id=task, labels=parse_selector_option(select), group_by=by)
    emit(call("CountClients", request), lambda r: render_groups(by, r))


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
