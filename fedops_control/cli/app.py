"""`fedopsctl`: tasks, clients, runs and models from the command line.

Exit codes: 0 ok, 1 service error, 2 bad input (usage errors, INVALID_ARGUMENT, NOT_FOUND),
3 refused (UNAUTHENTICATED, PERMISSION_DENIED). `run watch` and `run start --watch` exit once the
run has finished, with its outcome: 0 completed, 4 failed, 5 stopped (1 if the event stream ended
before the run finished); a non-zero outcome and its reason are printed last, to stderr.

Text from the service (error details, reasons, event messages, names) is printed as is, never
read as rich markup.
"""

from __future__ import annotations

import json
import sys
import tomllib
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from fedops_common import metricvalues
from fedops_common.convert import dict_to_struct, enum_label
from fedops_common.grpc_channel import control_channel
from fedops_common.proto import common_pb2, control_pb2, control_pb2_grpc
from fedops_common.security import ChannelSecurity
from fedops_control.task.spec import DEFAULT_RUN_CONFIG_KEYS, MAX_CLIENT_RESTARTS, MAX_RESTART_BACKOFF_S

app = typer.Typer(help="Operate FedOps Stack: tasks, clients, runs, models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
task_app = typer.Typer(help="Create and inspect FL tasks.", no_args_is_help=True)
clients_app = typer.Typer(help="Enrolled client devices.", no_args_is_help=True)
run_app = typer.Typer(help="Start, stop, watch and diagnose runs.", no_args_is_help=True)
models_app = typer.Typer(help="Global model versions.", no_args_is_help=True)
app.add_typer(task_app, name="task")
app.add_typer(clients_app, name="clients")
app.add_typer(run_app, name="run")
app.add_typer(models_app, name="models")
logs_app = typer.Typer(help="Logs of every actor, searched in Elasticsearch.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
ElasticsearchUrl = Annotated[str, typer.Option(envvar="FEDOPS_ELASTICSEARCH_URL", help="Elasticsearch URL")]
console = Console()
S = common_pb2
# `run watch` / `run start --watch`: exit code per outcome of the finished run.
RUN_EXIT_CODES = {S.RUN_OUTCOME_COMPLETED: 0, S.RUN_OUTCOME_FAILED: 4, S.RUN_OUTCOME_STOPPED: 5}
# The strategy settings an app receives through its run config (--run-config-key SETTING=KEY).
RUN_CONFIG_SETTINGS = tuple(DEFAULT_RUN_CONFIG_KEYS)


class Table(RichTable):
    """A rich Table that shows str cells and its title as they are: they hold the service's text,
    which rich would otherwise read as markup ("[tool.flwr.app.config]" would vanish)."""

    def __init__(self, *headers: Any, title: str | Text | None = None, **options: Any) -> None:
        super().__init__(*headers, title=Text(title, style="table.title") if isinstance(title, str) else title,
                         **options)

    def add_row(self, *cells: Any, **options: Any) -> None:
        super().add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells), **options)


def say(*parts: str | tuple[str, str], stderr: bool = False) -> None:
    """Print one line of plain text (str parts, or (text, style) pairs) with no markup, emoji codes
    or wrapping: the service's text stays intact and greppable."""
    (Console(stderr=True) if stderr else console).print(Text.assemble(*parts), soft_wrap=True)


class Output(str, Enum):
    table = "table"
    json = "json"


class Ctx:
    """Global options shared by every command."""

    control: str = "127.0.0.1:50051"
    output: Output = Output.table
    security: ChannelSecurity = ChannelSecurity()

    @classmethod
    def channel(cls) -> grpc.Channel:
        return control_channel(cls.control, cls.security)

    @classmethod
    def stub(cls) -> control_pb2_grpc.ControlServiceStub:
        return control_pb2_grpc.ControlServiceStub(cls.channel())


# Where `fedops-control` (default --data-dir) leaves the bootstrap admin token: used when no token is given.
LOCAL_ADMIN_TOKEN = Path(".fedops/control/admin.token")


@app.callback()
def main_options(
    control: Annotated[str, typer.Option(envvar="FEDOPS_CONTROL", help="control service host:port")] = "127.0.0.1:50051",
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json")] = Output.table,
    token: Annotated[str | None, typer.Option(envvar="FEDOPS_TOKEN", help="API token (sent as a bearer token)")] = None,
    token_file: Annotated[Path | None, typer.Option(
        envvar="FEDOPS_TOKEN_FILE", help=f"file holding the API token; default {LOCAL_ADMIN_TOKEN} if present")] = None,
    tls_ca: Annotated[str | None, typer.Option(envvar="FEDOPS_TLS_CA", help="CA to verify the service (TLS)")] = None,
    tls_cert: Annotated[str | None, typer.Option(envvar="FEDOPS_TLS_CERT", help="client certificate (mutual TLS)")] = None,
    tls_key: Annotated[str | None, typer.Option(envvar="FEDOPS_TLS_KEY", help="key of --tls-cert")] = None,
) -> None:
    """Global options."""
    Ctx.control, Ctx.output = control, output
    if token_file is None and not token and LOCAL_ADMIN_TOKEN.is_file():
        token_file = LOCAL_ADMIN_TOKEN
    try:
        Ctx.security = ChannelSecurity.from_env(token=token, token_file=str(token_file) if token_file else None,
                                                ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key)
        Ctx.security.check()
    except (OSError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--token-file/--tls-*") from None


def fail(message: str, code: int = 2) -> None:
    """Print an error (verbatim: it often holds the service's text) to stderr and exit."""
    say(("error:", "red"), " ", message, stderr=True)
    raise typer.Exit(code)


def call(method: Any, request: Any, timeout: float = 30) -> Any:
    """Unary call with errors mapped to exit codes."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        bad_input = code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                             grpc.StatusCode.FAILED_PRECONDITION)
        refused = code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        fail(f"{code.name}: {err.details()}", 2 if bad_input else 3 if refused else 1)  # type: ignore[attr-defined]


def as_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def emit(message: Any, render: Any) -> None:
    """JSON for --output json, else the given table renderer."""
    if Ctx.output == Output.json:
        print(json.dumps(as_json(message), indent=2, sort_keys=True))
    else:
        render(message)


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """key=value pairs; values are TOML literals (numbers, booleans, quoted strings) or bare strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint=option)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def parse_run_config_keys(pairs: list[str] | None) -> dict[str, str]:
    """--run-config-key SETTING=KEY pairs; an empty KEY means the app hard-codes the setting."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        setting, sep, key = pair.partition("=")
        setting = setting.strip()
        if not sep:
            raise typer.BadParameter(f"expected SETTING=KEY (KEY may be empty), got {pair!r}",
                                     param_hint="--run-config-key")
        if setting not in RUN_CONFIG_SETTINGS:
            raise typer.BadParameter(f"unknown setting {setting!r}; one of {', '.join(RUN_CONFIG_SETTINGS)}",
                                     param_hint="--run-config-key")
        out[setting] = key.strip()
    return out


@app.command("health")
def health(service: Annotated[str, typer.Option(help="service name; '' = the server")] = "") -> None:
    """Check the control service through the standard gRPC health service (exit 1 unless SERVING)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(Ctx.channel())
    try:
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    except grpc.RpcError as err:
        fail(f"{err.code().name}: {err.details()}", 1)  # type: ignore[attr-defined]
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if Ctx.output == Output.json:
        print(json.dumps({"status": status}))
    else:
        say(status)
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(1)


# ------------------------------------------------------------------ tasks
def describe_run_config_keys(keys: Any) -> str:
    """Where each strategy setting goes: the app's run-config key, or nowhere (hard-coded by the app)."""
    settings = [*RUN_CONFIG_SETTINGS, *sorted(set(keys) - set(RUN_CONFIG_SETTINGS))]
    return "\n".join(f"{name} -> run config key {keys[name]}" if keys[name] else
                     f"{name}: hard-coded by the app (not passed)" for name in settings if name in keys)


def render_task(task: common_pb2.Task) -> None:
    table = Table(title=f"Task {task.id}", show_header=False)
    app_ref = task.app.local_path or f"{task.app.git.url}@{task.app.git.ref}"
    s = task.strategy
    best = (f"{s.best_metric} ({'lower' if s.best_metric_lower_is_better else 'higher'} is better)"
            if s.best_metric else "")
    for key, value in [("title", task.title), ("description", task.description), ("tags", ", ".join(task.tags)),
                       ("app", app_ref),
                       ("strategy", f"{s.name}: {s.rounds} rounds, quorum {s.min_clients}, fraction "
                                    f"{s.fraction_train:g}/{s.fraction_evaluate:g}, round timeout {s.round_timeout_s:g}s"),
                       ("client retry", f"up to {s.client_max_restarts} restarts, backoff from "
                                        f"{s.client_restart_backoff_s:g}s"),
                       ("best metric", best),
                       ("run config", describe_run_config_keys(s.run_config_keys)),
                       ("hyperparameters", json.dumps(json_format.MessageToDict(task.hyperparameters))),
                       ("client config", json.dumps(json_format.MessageToDict(task.client_config))),
                       ("enrolled", ", ".join(task.enrolled_client_ids)),
                       ("selected", ", ".join(task.selected_client_ids))]:
        table.add_row(key, value)
    console.print(table)


BEST_METRIC_HELP = ("metric that picks the 'best' model: central.NAME, train.NAME or evaluate.NAME (aggregated "
                    "by the strategy), client.train.NAME or client.evaluate.NAME (mean over the round's clients)")
RUN_CONFIG_KEY_HELP = (f"SETTING=KEY (repeatable): the app's run-config key receiving a strategy setting "
                       f"({', '.join(RUN_CONFIG_SETTINGS)}); an empty KEY = the app hard-codes it, FedOps does "
                       f"not pass it")


@task_app.command("create")
def task_create(
    title: Annotated[str, typer.Option(help="task title")],
    app_path: Annotated[str | None, typer.Option("--app", help="local Flower app directory")] = None,
    git_url: Annotated[str | None, typer.Option(help="git URL of the Flower app")] = None,
    git_ref: Annotated[str, typer.Option(help="git branch/tag/commit")] = "main",
    git_subdir: Annotated[str, typer.Option(help="app directory inside the repository")] = "",
    description: Annotated[str, typer.Option()] = "",
    tag: Annotated[list[str] | None, typer.Option(help="tag (repeatable)")] = None,
    strategy: Annotated[str | None, typer.Option(help="strategy name (informational)")] = None,
    rounds: Annotated[int | None, typer.Option(min=1)] = None,
    min_clients: Annotated[int | None, typer.Option(min=1, help="quorum per round")] = None,
    fraction_train: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    fraction_evaluate: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    round_timeout: Annotated[float | None, typer.Option(min=0.0, help="seconds")] = None,
    client_max_restarts: Annotated[int | None, typer.Option(
        min=0, max=MAX_CLIENT_RESTARTS, help="restarts of a client's failed SuperNode per run (0 = never)")] = None,
    client_restart_backoff: Annotated[float | None, typer.Option(
        min=0.01, max=MAX_RESTART_BACKOFF_S, help="seconds before the first restart; doubles up to 30 s")] = None,
    best_metric: Annotated[str | None, typer.Option(help=BEST_METRIC_HELP)] = None,
    lower_is_better: Annotated[bool | None, typer.Option(
        "--lower-is-better/--higher-is-better", help="direction of --best-metric; default: lower for names "
        "ending in 'loss', else higher")] = None,
    run_config_key: Annotated[list[str] | None, typer.Option(help=RUN_CONFIG_KEY_HELP)] = None,
    hp: Annotated[list[str] | None, typer.Option(help="hyperparameter key=value; ${...} templating allowed")] = None,
    client_config: Annotated[list[str] | None, typer.Option(help="per-client node config key=value")] = None,
) -> None:
    """Create an FL task. Strategy settings not given are not sent: the service applies its defaults."""
    if bool(app_path) == bool(git_url):
        raise typer.BadParameter("give exactly one of --app or --git-url", param_hint="--app/--git-url")
    app_ref = common_pb2.AppReference(local_path=str(Path(app_path).resolve())) if app_path else \
        common_pb2.AppReference(git=common_pb2.GitSource(url=git_url, ref=git_ref, subdirectory=git_subdir))
    given = {"name": strategy, "rounds": rounds, "min_clients": min_clients, "fraction_train": fraction_train,
             "fraction_evaluate": fraction_evaluate, "round_timeout_s": round_timeout,
             "client_max_restarts": client_max_restarts, "client_restart_backoff_s": client_restart_backoff,
             "best_metric": best_metric, "best_metric_lower_is_better": lower_is_better}
    # Only what was given: proto3 zero means unset, and the service refuses a given setting the app cannot receive.
    settings = common_pb2.StrategySettings(**{k: v for k, v in given.items() if v is not None},
                                           run_config_keys=parse_run_config_keys(run_config_key))
    task = common_pb2.Task(
        title=title, description=description, tags=tag or [], app=app_ref, strategy=settings,
        hyperparameters=dict_to_struct(parse_pairs(hp, "--hp")),
        client_config=dict_to_struct(parse_pairs(client_config, "--client-config")))
    emit(call(Ctx.stub().CreateTask, control_pb2.CreateTaskRequest(task=task)), render_task)


@task_app.command("update")
def task_update(
    task_id: str,
    title: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[list[str] | None, typer.Option(help="tag (repeatable; replaces the tags)")] = None,
    app_path: Annotated[str | None, typer.Option("--app", help="local Flower app directory")] = None,
    git_url: Annotated[str | None, typer.Option(help="git URL of the Flower app")] = None,
    git_ref: Annotated[str, typer.Option(help="git branch/tag/commit")] = "main",
    git_subdir: Annotated[str, typer.Option(help="app directory inside the repository")] = "",
    rounds: Annotated[int | None, typer.Option(min=1)] = None,
    min_clients: Annotated[int | None, typer.Option(min=1, help="quorum per round")] = None,
    fraction_train: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    fraction_evaluate: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    round_timeout: Annotated[float | None, typer.Option(min=0.0, help="seconds")] = None,
    client_max_restarts: Annotated[int | None, typer.Option(
        min=0, max=MAX_CLIENT_RESTARTS, help="restarts of a client's failed SuperNode per run (0 = never)")] = None,
    client_restart_backoff: Annotated[float | None, typer.Option(
        min=0.01, max=MAX_RESTART_BACKOFF_S, help="seconds before the first restart; doubles up to 30 s")] = None,
    best_metric: Annotated[str | None, typer.Option(help=BEST_METRIC_HELP)] = None,
    lower_is_better: Annotated[bool | None, typer.Option(
        "--lower-is-better/--higher-is-better", help="direction of the best metric; with a new --best-metric and "
        "neither flag: lower for names ending in 'loss', else higher")] = None,
    run_config_key: Annotated[list[str] | None, typer.Option(
        help=RUN_CONFIG_KEY_HELP + " (merged into the task's)")] = None,
    hp: Annotated[list[str] | None, typer.Option(help="hyperparameter key=value (merged into the task's)")] = None,
    unset_hp: Annotated[list[str] | None, typer.Option(help="hyperparameter key to remove")] = None,
) -> None:
    """Edit a task: only the given settings change."""
    if app_path and git_url:
        raise typer.BadParameter("give at most one of --app or --git-url", param_hint="--app/--git-url")
    current = call(Ctx.stub().GetTask, control_pb2.GetTaskRequest(task_id=task_id))
    task = common_pb2.Task(id=task_id)
    paths = []
    if title is not None:
        task.title, paths = title, [*paths, "title"]
    if description is not None:
        task.description, paths = description, [*paths, "description"]
    if tag is not None:
        task.tags.extend(tag)
        paths.append("tags")
    if app_path or git_url:
        task.app.CopyFrom(common_pb2.AppReference(local_path=str(Path(app_path).resolve())) if app_path else
                          common_pb2.AppReference(git=common_pb2.GitSource(url=git_url, ref=git_ref,
                                                                           subdirectory=git_subdir)))
        paths.append("app")
    keys = parse_run_config_keys(run_config_key)
    changes = {"rounds": rounds, "min_clients": min_clients, "fraction_train": fraction_train,
               "fraction_evaluate": fraction_evaluate, "round_timeout_s": round_timeout,
               "client_max_restarts": client_max_restarts, "client_restart_backoff_s": client_restart_backoff,
               "best_metric": best_metric, "best_metric_lower_is_better": lower_is_better}
    if keys or any(v is not None for v in changes.values()):
        task.strategy.CopyFrom(current.strategy)
        for field, value in changes.items():
            if value is not None:
                setattr(task.strategy, field, value)
        if best_metric is not None and lower_is_better is None:
            task.strategy.ClearField("best_metric_lower_is_better")  # the service decides for the new metric
        task.strategy.run_config_keys.update(keys)
        paths.append("strategy")
    if hp or unset_hp:
        values = {**json_format.MessageToDict(current.hyperparameters), **parse_pairs(hp, "--hp")}
        for key in unset_hp or []:
            values.pop(key, None)
        task.hyperparameters.CopyFrom(dict_to_struct(values))
        paths.append("hyperparameters")
    if not paths:
        raise typer.BadParameter("nothing to change: give at least one setting", param_hint="OPTIONS")
    emit(call(Ctx.stub().UpdateTask, control_pb2.UpdateTaskRequest(task=task, update_paths=paths)), render_task)


@task_app.command("list")
def task_list(tag: Annotated[str, typer.Option()] = "") -> None:
    """List tasks."""
    response = call(Ctx.stub().ListTasks, control_pb2.ListTasksRequest(tag=tag))

    def render(resp: control_pb2.ListTasksResponse) -> None:
        table = Table("id", "title", "tags", "rounds", "enrolled", "selected", title="Tasks")
        for t in resp.tasks:
            table.add_row(t.id, t.title, ", ".join(t.tags), str(t.strategy.rounds), str(len(t.enrolled_client_ids)),
                          str(len(t.selected_client_ids)))
        console.print(table)

    emit(response, render)


@task_app.command("show")
def task_show(task_id: str) -> None:
    """Show one task."""
    emit(call(Ctx.stub().GetTask, control_pb2.GetTaskRequest(task_id=task_id)), render_task)


@task_app.command("select")
def task_select(task_id: str, client_ids: Annotated[list[str], typer.Argument(help="clients to take part")]) -> None:
    """Select the clients that take part in the task's runs."""
    emit(call(Ctx.stub().SetTaskMembership, control_pb2.SetTaskMembershipRequest(task_id=task_id, client_ids=client_ids)),
         render_task)


@task_app.command("delete")
def task_delete(task_id: str) -> None:
    """Delete a task that has no runs."""
    emit(call(Ctx.stub().DeleteTask, control_pb2.DeleteTaskRequest(task_id=task_id)),
         lambda r: say(f"deleted {task_id}"))


# ------------------------------------------------------------------ clients
def render_clients(resp: control_pb2.ListClientsResponse) -> None:
    table = Table("id", "hostname", "state", "reason", "heartbeat age", "tasks", "run", title="Clients")
    for c in resp.clients:
        age = f"{c.heartbeat_age_s:.1f}s" if c.heartbeat_age_s >= 0 else "-"
        table.add_row(c.id, c.device.hostname, enum_label(S.ClientState, c.state), c.state_reason, age,
                      ", ".join(c.enrolled_task_ids), c.current_run_id)
    console.print(table)


@clients_app.command("list")
def clients_list(task: Annotated[str, typer.Option(help="only clients enrolled in this task")] = "") -> None:
    """List clients with state and heartbeat age."""
    emit(call(Ctx.stub().ListClients, control_pb2.ListClientsRequest(task_id=task)), render_clients)


@clients_app.command("show")
def clients_show(client_id: str) -> None:
    """Show one client."""
    emit(call(Ctx.stub().GetClient, control_pb2.GetClientRequest(client_id=client_id)),
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
    emit(call(Ctx.stub().ListDataStatus, request), render_data_status)


# ------------------------------------------------------------------ runs
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
    run = call(Ctx.stub().StartRun, control_pb2.StartRunRequest(
        task_id=task_id, client_ids=client or [], resume_from_model_id=resume_from,
        hyperparameter_overrides=dict_to_struct(parse_pairs(hp, "--hp"))))
    if watch:
        run_watch(run.id)  # exits with the run's outcome
        return
    emit(run, render_run)


@run_app.command("stop")
def run_stop(run_id: str, hard: Annotated[bool, typer.Option(help="stop now instead of after the round")] = False) -> None:
    """Stop a run: after the current round (default) or at once (--hard)."""
    mode = control_pb2.STOP_MODE_HARD if hard else control_pb2.STOP_MODE_COOPERATIVE
    emit(call(Ctx.stub().StopRun, control_pb2.StopRunRequest(run_id=run_id, mode=mode)), render_run)


@run_app.command("show")
def run_show(run_id: str) -> None:
    """Show a run with rounds and per-client results."""
    emit(call(Ctx.stub().GetRun, control_pb2.GetRunRequest(run_id=run_id)), render_run)


@run_app.command("list")
def run_list(task: Annotated[str, typer.Option()] = "") -> None:
    """List runs."""
    def render(resp: control_pb2.ListRunsResponse) -> None:
        table = Table("id", "task", "state", "outcome", "round", "clients", "reason", title="Runs")
        for r in resp.runs:
            table.add_row(r.id, r.task_id, enum_label(S.RunState, r.state),
                          enum_label(S.RunOutcome, r.outcome) if r.outcome else "", f"{r.current_round}/{r.total_rounds}",
                          str(len(r.client_ids)), r.reason)
        console.print(table)

    emit(call(Ctx.stub().ListRuns, control_pb2.ListRunsRequest(task_id=task)), render)


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
    stub = Ctx.stub()
    try:
        for event in stub.WatchRun(control_pb2.WatchRunRequest(run_id=run_id)):
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
                text += (f" | clients {', '.join(data.get('responded', []))}"
                         + (f" | global loss {central['loss']:.4f} acc {central['accuracy']:.4f}" if "loss" in central else ""))
            say((stamp, "dim"), " ", (text, style))
    except grpc.RpcError as err:
        fail(f"{err.code().name}: {err.details()}", 2 if err.code() == grpc.StatusCode.NOT_FOUND else 1)  # type: ignore[attr-defined]
    run = call(stub.GetRun, control_pb2.GetRunRequest(run_id=run_id))
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

    emit(call(Ctx.stub().DiagnoseRun, control_pb2.DiagnoseRunRequest(run_id=run_id)), render)


# ------------------------------------------------------------------ models
def render_models(resp: control_pb2.ListModelsResponse) -> None:
    table = Table("id", "task", "run", "round", "version", "tags", "metrics", "participants", "parent", "bytes",
                  title="Model versions")
    for m in resp.models:
        table.add_row(m.id, m.task_id, m.run_id, str(m.round), f"v{m.version}", ", ".join(m.tags),
                      metricvalues.text(m.metrics, ("central.accuracy", "central.loss")), ", ".join(m.participant_client_ids),
                      m.parent_id, str(m.size_bytes))
    console.print(table)


@models_app.command("list")
def models_list(task: Annotated[str, typer.Option()] = "", run: Annotated[str, typer.Option()] = "") -> None:
    """List global model versions with lineage (for a run without any: why the registry holds none)."""
    response = call(Ctx.stub().ListModels, control_pb2.ListModelsRequest(task_id=task, run_id=run))
    emit(response, render_models)
    if run and not response.models and Ctx.output == Output.table:
        note = call(Ctx.stub().GetRun, control_pb2.GetRunRequest(run_id=run)).model_note
        say(f"no model versions: {note or 'the run has stored none yet'}")


@models_app.command("show")
def models_show(model_id: str, task: Annotated[str, typer.Option(help="task, with 'best'/'latest'")] = "") -> None:
    """Show one version (an id, or 'best'/'latest' with --task)."""
    emit(call(Ctx.stub().GetModel, control_pb2.GetModelRequest(model_id=model_id, task_id=task)),
         lambda m: render_models(control_pb2.ListModelsResponse(models=[m])))


@models_app.command("download")
def models_download(model_id: str, out: Annotated[Path, typer.Option("--out", "-o", help="file to write")],
                    task: Annotated[str, typer.Option(help="task, with 'best'/'latest'")] = "") -> None:
    """Download a version's weights (npz of named arrays)."""
    stub = Ctx.stub()
    version = None
    try:
        with out.open("wb") as fh:
            for chunk in stub.DownloadModel(control_pb2.GetModelRequest(model_id=model_id, task_id=task), timeout=300):
                if chunk.HasField("version"):
                    version = chunk.version
                fh.write(chunk.data)
    except grpc.RpcError as err:
        out.unlink(missing_ok=True)
        code = err.code()  # type: ignore[attr-defined]
        fail(f"{code.name}: {err.details()}", 2 if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 1)  # type: ignore[attr-defined]
    result = {"path": str(out), "model_id": version.id if version else model_id,
              "sha256": version.sha256 if version else "", "bytes": out.stat().st_size}
    if Ctx.output == Output.json:
        print(json.dumps(result, indent=2))
    else:
        say(f"wrote {result['bytes']} bytes of {result['model_id']} to {out}")


# ------------------------------------------------------------------ telemetry (Elasticsearch)
def _require_elasticsearch(url: str) -> str:
    if not url:
        fail("no Elasticsearch: pass --elasticsearch-url or set FEDOPS_ELASTICSEARCH_URL")
    return url


def _print_rows(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
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
    round_number: Annotated[int | None, typer.Option("--round", min=0, help="round number")] = None,
    level: Annotated[str, typer.Option(help="debug, info, warning, error, critical")] = "",
    text: Annotated[str, typer.Option(help="words the message must contain")] = "",
    size: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
) -> None:
    """Newest log lines of every actor, filtered by client, run, round, level and text."""
    from fedops_common.telemetry.queries import QueryError, search_logs

    if level and level not in ("debug", "info", "warning", "error", "critical"):
        raise typer.BadParameter(f"unknown level {level!r}", param_hint="--level")
    try:
        hits = search_logs(_require_elasticsearch(elasticsearch_url), client, run, round_number, level, text, size)
    except QueryError as err:
        fail(str(err), 1)
    rows = [{"time": h.get("@timestamp", ""), "level": h.get("log.level", ""), "service": h.get("service.name", ""),
             "client": h.get("fedops.client.id", ""), "run": h.get("fedops.run.id", ""),
             "round": h.get("fedops.round", ""), "message": h.get("message", "")} for h in hits]
    _print_rows(rows, ["time", "level", "service", "client", "run", "round", "message"], f"{len(rows)} log lines")


PLATFORM_METRICS = {"rounds_completed": "sum(fedops_rounds_completed_total)",
                    "scrape_targets_up": 'sum(up{job=~"fedops-.*"})',
                    "client_failures": "sum(fedops_client_failures_total)"}


@app.command("metrics")
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
    _print_rows(rows, ["name", "labels", "value"], "Platform metrics")


@clients_app.command("resources")
def clients_resources(
    client_id: str,
    elasticsearch_url: ElasticsearchUrl = "",
    size: Annotated[int, typer.Option(min=1, max=10_000, help="latest samples")] = 60,
) -> None:
    """A client's latest resource samples (CPU, memory, RSS), with run, round and model version."""
    from fedops_common.telemetry.queries import QueryError, resource_timeline

    try:
        samples = resource_timeline(_require_elasticsearch(elasticsearch_url), client_id, size)
    except QueryError as err:
        fail(str(err), 1)
    rows = [{"time": s.get("@timestamp", ""), "cpu": s.get("host.cpu.usage"), "memory": s.get("system.memory.used.pct"),
             "rss_bytes": s.get("process.memory.rss"), "run": s.get("fedops.run.id", ""),
             "round": s.get("fedops.round", 0), "model_version": s.get("fedops.model.version", 0)} for s in samples]
    _print_rows(rows, ["time", "cpu", "memory", "rss_bytes", "run", "round", "model_version"],
                f"resources of {client_id}")


from fedops_control.cli import access as _access  # noqa: E402,F401 - registers token, ca, whoami commands


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
