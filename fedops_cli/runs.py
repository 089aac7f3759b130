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
    say,
)
from fedops_client import ControlError
from fedops_common import metricvalues
from fedops_common.convert import dict_to_struct, enum_label
from fedops_common.proto import common_pb2, control_pb2

run_app = typer.Typer(help="Start, stop, watch and diagnose runs.", no_args_is_help=True)
# `run watch` / `run start --watch`: exit code per outcome of the finished run.
RUN_EXIT_CODES = {S.RUN_OUTCOME_COMPLETED: 0, S.RUN_OUTCOME_FAILED: 4, S.RUN_OUTCOME_STOPPED: 5}


def render_run(run: common_pb2.Run) -> None:
    outcome = f" ({enum_label(S.RunOutcome, run.outcome)})" if run.state == S.RUN_STATE_FINISHED else ""
    total = run.total_rounds or "?"
    say((f"Run {run.id}", "bold"), f" task={run.task_id} state={enum_label(S.RunState, run.state)}{outcome} "
        f"round {run.current_round}/{total}, {run.completed_rounds} completed  {run.reason}")
    if run.api_style:
        say(f"observed as: {enum_label(S.ApiStyle, run.api_style)}")
    if run.app_decides:
        say("the app hard-codes: " + ", ".join(f"strategy.{name}" for name in run.app_decides))
    if run.model_note:
        say(f"models: {run.model_note}")
    table = Table("round", "phase", "participants", "failed", "central", "train", "evaluate", "model", title="Rounds")
    if run.initial_central_metrics:
        table.add_row("0", "initial", "", "", metricvalues.text(run.initial_central_metrics), "", "", "")
    for r in run.rounds:
        table.add_row(str(r.number), r.phase, ", ".join(r.responded_client_ids), ", ".join(r.failed_client_ids),
                      metricvalues.text(metricvalues.merged(r.central_metrics, r.central_metric_lists)),
                      metricvalues.text(metricvalues.merged(r.train_metrics, r.train_metric_lists)),
                      metricvalues.text(metricvalues.merged(r.evaluate_metrics, r.evaluate_metric_lists)),
                      r.model_version_id)
    console.print(table)
    clients = Table("round", "client", "phase", "metrics", "seconds", "error", title="Per-client results")
    for r in run.rounds:
        for c in r.client_results:
            clients.add_row(str(r.number), c.client_id, c.phase,
                            metricvalues.text(metricvalues.merged(c.metrics, c.metric_lists)), f"{c.duration_s:.2f}",
                            c.error)
    console.print(clients)


@run_app.command("start")
def run_start(
    task_id: str,
    client: Annotated[list[str] | None, typer.Option(help="client id (default: the task's selection)")] = None,
    resume_from: Annotated[str, typer.Option(help="model id, or 'latest'/'best' of the task")] = "",
    hp: Annotated[list[str] | None, typer.Option(help="hyperparameter override key=value")] = None,
    watch: Annotated[bool, typer.Option(help="follow the run until it finishes")] = False,
) -> None:
    """Start a run of a task."""
    run = call("StartRun", control_pb2.StartRunRequest(
        task_id=task_id, client_ids=client or [], resume_from_model_id=resume_from,
        hyperparameter_overrides=dict_to_struct(parse_pairs(hp, "--hp"))))
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
def run_list(task: Annotated[str, typer.Option()] = "") -> None:
    """List runs."""
    def render(resp: control_pb2.ListRunsResponse) -> None:
        table = Table("id", "task", "state", "outcome", "round", "clients", "reason", title="Runs")
        for r in resp.runs:
            table.add_row(
                r.id,
                r.task_id,
                enum_label(S.RunState, r.state),
                enum_label(S.RunOutcome, r.outcome) if r.outcome else "",
                f"{r.current_round}/{r.total_rounds}",
                str(len(r.client_ids)),
                r.reason,
            )
        console.print(table)

    emit(call("ListRuns", control_pb2.ListRunsRequest(task_id=task)), render)


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
            style = {"client_failed": "red", "round_finished": "bold green", "run_finished": "bold",
                     "model_stored": "cyan"}.get(event.kind, "")
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
