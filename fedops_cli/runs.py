"""`fedopsctl run ...`: start, stop, watch, show, list and diagnose runs.

`run watch` and `run start --watch` exit once the run has finished, with its outcome: 0 completed,
4 failed, 5 stopped (1 if the event stream ended before the run finished); a non-zero outcome and
its reason are printed last, to stderr.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from google.protobuf import json_format

from fedops_cli.columns import ID, NUMBER, TEXT, Column, print_table
from fedops_cli.columns import number as number_cell
from fedops_cli.context import (
    Ctx,
    Output,
    S,
    Table,
    as_json,
    call,
    console,
    emit,
    exit_code,
    fail,
    parse_pairs,
    parse_selector_option,
    say,
)
from fedops_client import ControlError, start_run_request
from fedops_common import words
from fedops_common.convert import enum_label
from fedops_common.labels import format_selector
from fedops_common.proto import common_pb2, control_pb2

run_app = typer.Typer(help="Start, stop, watch and diagnose runs.", no_args_is_help=True)
# `run watch` / `run start --watch`: exit code per outcome of the finished run.
RUN_EXIT_CODES = {S.RUN_OUTCOME_COMPLETED: 0, S.RUN_OUTCOME_FAILED: 4, S.RUN_OUTCOME_STOPPED: 5}


def _metric_columns(maps: list[dict[str, float]], keep: int) -> list[str]:
    """The scalar metric names of some rows: accuracy first, then loss, then the rest by name."""
    names = sorted({name for m in maps for name in m})
    return sorted(names, key=lambda n: (0 if "acc" in n else 1 if "loss" in n else 2, n)) if keep else names


def render_run(run: common_pb2.Run) -> None:
    status = words.run_status(S.RunState.Name(run.state), S.RunOutcome.Name(run.outcome))
    started = run.started_at.ToDatetime() if run.HasField("started_at") else None
    ended = run.finished_at.ToDatetime() if run.HasField("finished_at") else None
    took = (ended - started).total_seconds() if started and ended else None
    say((f"Run {run.id}", "bold"), f" of task {run.task_id}")
    say(f"{status}, {words.rounds(run.current_round, run.total_rounds, run.completed_rounds)}")
    say(f"started {started:%Y-%m-%d %H:%M:%S}" if started else "not started",
        f", ended {ended:%H:%M:%S} (took {words.duration(took)})" if ended else "")
    if run.reason:
        say(run.reason)
    if run.selection.WhichOneof("by") == "labels":
        chosen = run.selection.labels
        say(f"clients chosen by label: {format_selector(chosen.match_labels) or 'any label'}, "
            f"{chosen.count or 'every free one'} -> {', '.join(run.client_ids)}")
    if run.api_style:
        say(f"observed as: {enum_label(S.ApiStyle, run.api_style).replace('_', ' ')}")
    if run.app_decides:
        say("the app hard-codes: " + ", ".join(f"strategy.{name}" for name in run.app_decides))
    if run.model_note:
        say(f"models: {run.model_note}")
    scopes = {"central": 1, "evaluate": 2, "train": 3}
    per_round: list[tuple[int, str, dict[str, float], list[str], list[str], str]] = []
    if run.initial_central_metrics:
        initial = {f"central {k}": v for k, v in run.initial_central_metrics.items()}
        per_round.append((0, "initial", initial, [], [], ""))
    for r in run.rounds:
        values = {f"{scope} {k}": v for scope in scopes for k, v in getattr(r, f"{scope}_metrics").items()}
        per_round.append((r.number, r.phase, values, list(r.responded_client_ids), list(r.failed_client_ids),
                          r.model_version_id))
    names = _metric_columns([row[2] for row in per_round], 1)
    columns = [Column("round", NUMBER), Column("phase", TEXT, 5),
               *(Column(n, NUMBER, scopes[n.split(" ", 1)[0]]) for n in names),
               Column("replied", TEXT, 6), Column("failed", TEXT, 4), Column("model", ID, 7)]
    print_table("Rounds", columns, [[str(number), phase, *(number_cell(values.get(n)) for n in names),
                                     ", ".join(replied), ", ".join(failed), model]
                                    for number, phase, values, replied, failed, model in per_round])
    results = [(r.number, c) for r in run.rounds for c in r.client_results]
    names = _metric_columns([dict(c.metrics) for _, c in results], 1)
    print_table("Per-client results", [Column("round", NUMBER), Column("client", ID), Column("phase", TEXT, 4),
                                       *(Column(n, NUMBER, 2) for n in names), Column("seconds", NUMBER, 3),
                                       Column("error", TEXT, 1)],
                [[str(number), c.client_id, c.phase, *(number_cell(c.metrics.get(n)) for n in names),
                  f"{c.duration_s:.2f}", c.error] for number, c in results])


@run_app.command("start")
def run_start(
    task_id: str,
    client: Annotated[list[str] | None, typer.Option(help="client id (default: the task's selection)")] = None,
    select: Annotated[str | None, typer.Option(
        "--select", help="take clients with these labels instead: key=value,key=value ('' = any label)")] = None,
    count: Annotated[int, typer.Option(
        min=0, help="with --select: how many clients (0 = every matching free one); least recently used first")] = 0,
    resume_from: Annotated[str, typer.Option(help="model id, or 'latest'/'best' of the task")] = "",
    hp: Annotated[list[str] | None, typer.Option(help="hyperparameter override key=value")] = None,
    watch: Annotated[bool, typer.Option(help="follow the run until it finishes")] = False,
) -> None:
    """Start a run of a task: on the task's clients, on --client ids, or on --count clients chosen by label
    (--select site=eu,gpu=true): online, in no other run, least recently selected first."""
    if client and select is not None:
        raise typer.BadParameter("give --client ids or --select labels, not both", param_hint="--client/--select")
    if count and select is None:
        raise typer.BadParameter("--count goes with --select", param_hint="--count")
    request = start_run_request(task_id, client_ids=client or [],
                                match_labels=parse_selector_option(select) if select is not None else None, count=count,
                                resume_from=resume_from, overrides=parse_pairs(hp, "--hp"))
    run = call("StartRun", request)
    if watch:
        run_watch(run.id)  # exits with the run's outcome
        return
    emit(run, render_run)


@run_app.command("stop")
def run_stop(
    run_id: str, hard: Annotated[bool, typer.Option(help="stop now instead of after the round")] = False
) -> None:
    """Stop a run: after the current round (default) or at once (--hard)."""
    mode = control_pb2.STOP_MODE_HARD if hard else control_pb2.STOP_MODE_COOPERATIVE
    emit(call("StopRun", control_pb2.StopRunRequest(run_id=run_id, mode=mode)), render_run)


@run_app.command("show")
def run_show(run_id: str) -> None:
    """Show a run with rounds and per-client results."""
    emit(call("GetRun", control_pb2.GetRunRequest(run_id=run_id)), render_run)


@run_app.command("list")
def run_list(
    task: Annotated[str, typer.Option()] = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="runs per page")] = 50,
    page_token: Annotated[str, typer.Option(help="the next page (printed under a full page)")] = "",
) -> None:
    """List runs, newest first."""
    def render(resp: control_pb2.ListRunsResponse) -> None:
        print_table("Runs (newest first)", [
            Column("id", ID), Column("status", TEXT), Column("round", NUMBER, 3), Column("created", ID, 2),
            Column("task", ID, 5), Column("clients", NUMBER, 4), Column("reason", TEXT, 1)],
            [[r.id, words.run_status(S.RunState.Name(r.state), S.RunOutcome.Name(r.outcome)),
              f"{r.current_round}/{r.total_rounds or '?'}",
              f"{r.created_at.ToDatetime():%m-%d %H:%M}" if r.HasField("created_at") else "",
              r.task_id, str(len(r.client_ids)), r.reason] for r in resp.runs])
        if resp.next_page_token:
            say(f"more: fedopsctl run list --page-token {resp.next_page_token}")

    emit(call("ListRuns", control_pb2.ListRunsRequest(task_id=task, page_size=limit, page_token=page_token)), render)


def exit_with_outcome(run: common_pb2.Run) -> None:
    """Exit 0 if the run completed, 4 if it failed, 5 if it was stopped (1 if not finished): the
    outcome and reason go last, to stderr, unless it completed."""
    if run.state != S.RUN_STATE_FINISHED:
        say(("error:", "red"), f" run {run.id} is {enum_label(S.RunState, run.state)}: the event stream ended "
            "before it finished", stderr=True)
        raise typer.Exit(1)
    code = RUN_EXIT_CODES.get(run.outcome, 1)
    if code:
        outcome = enum_label(S.RunOutcome, run.outcome) or "no outcome"
        say((f"run {run.id} {outcome}", "red"), f": {run.reason}" if run.reason else "", stderr=True)
    raise typer.Exit(code)


@run_app.command("watch")
def run_watch(run_id: str) -> None:
    """Follow a run live until it finishes, then print its summary. Exits 0 if the run completed,
    4 if it failed, 5 if it was stopped."""
    try:
        for event in Ctx.client().stream("WatchRun", control_pb2.WatchRunRequest(run_id=run_id)):
            if Ctx.output == Output.json:
                print(json.dumps(as_json(event), sort_keys=True), flush=True)
                continue
            stamp = event.time.ToDatetime().strftime("%H:%M:%S")
            style = {"client_failed": "red", "warm_apps_fallback": "yellow", "round_finished": "bold green",
                     "run_finished": "bold", "model_stored": "cyan"}.get(event.kind, "")
            text = event.message
            if event.kind == "round_finished":
                data = json_format.MessageToDict(event.data)
                central = data.get("central", {})
                text += f" | clients {', '.join(data.get('responded', []))}" + (
                    f" | global loss {central['loss']:.4f} acc {central['accuracy']:.4f}" if "loss" in central else ""
                )
            say((stamp, "dim"), " ", (text, style))
    except ControlError as err:
        fail(str(err), exit_code(err))
    run = call("GetRun", control_pb2.GetRunRequest(run_id=run_id))
    if Ctx.output == Output.table:
        render_run(run)
    exit_with_outcome(run)


@run_app.command("diagnose")
def run_diagnose(run_id: str) -> None:
    """Why is the run waiting? Who is missing, since when, how long until the timeout."""
    def render(d: common_pb2.Diagnosis) -> None:
        say(d.summary)
        if d.missing:
            table = Table("client", "state", "heartbeat age", "reason", title="Missing")
            for m in d.missing:
                table.add_row(m.client_id, enum_label(S.ClientState, m.state), f"{m.heartbeat_age_s:.1f}s", m.reason)
            console.print(table)

    emit(call("DiagnoseRun", control_pb2.DiagnoseRunRequest(run_id=run_id)), render)
