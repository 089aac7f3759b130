"""`fedopsctl task ...`: create, edit, list, show, select clients, delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format

from fedops_cli.columns import ID, NUMBER, TEXT, Column, print_table
from fedops_cli.context import Table, call, console, emit, parse_pairs, parse_selector_option, say
from fedops_client import label_selection, task_update_request
from fedops_common.convert import dict_to_struct
from fedops_common.labels import format_selector
from fedops_common.proto import common_pb2, control_pb2
from fedops_common.strategy_settings import (
    DEFAULT_RUN_CONFIG_KEYS,
    MAX_CLIENT_RESTARTS,
    MAX_RESTART_BACKOFF_S,
)

task_app = typer.Typer(help="Create and inspect FL tasks.", no_args_is_help=True)
# The strategy settings an app receives through its run config (--run-config-key SETTING=KEY).
RUN_CONFIG_SETTINGS = tuple(DEFAULT_RUN_CONFIG_KEYS)


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


def describe_run_config_keys(keys: Any) -> str:
    """Where each strategy setting goes: the app's run-config key, or nowhere (hard-coded by the app)."""
    settings = [*RUN_CONFIG_SETTINGS, *sorted(set(keys) - set(RUN_CONFIG_SETTINGS))]
    return "\n".join(f"{name} -> run config key {keys[name]}" if keys[name] else
                     f"{name}: hard-coded by the app (not passed)" for name in settings if name in keys)


def describe_label_selection(task: common_pb2.Task) -> str:
    """How the task's runs choose clients by label, in words."""
    chosen = task.label_selection
    count = f"{chosen.count} clients" if chosen.count else "every free client"
    return f"{count} labelled {format_selector(chosen.match_labels)}" if chosen.match_labels else count


def render_task(task: common_pb2.Task) -> None:
    table = Table(title=f"Task {task.id}", show_header=False)
    app_ref = task.app.local_path or f"{task.app.git.url}@{task.app.git.ref}"
    s = task.strategy
    best = (f"{s.best_metric} ({'lower' if s.best_metric_lower_is_better else 'higher'} is better)"
            if s.best_metric else "")
    for key, value in [
        ("title", task.title),
        ("description", task.description),
        ("tags", ", ".join(task.tags)),
        ("app", app_ref),
        (
            "strategy",
            f"{s.name}: {s.rounds} rounds, quorum {s.min_clients}, fraction "
            f"{s.fraction_train:g}/{s.fraction_evaluate:g}, round timeout {s.round_timeout_s:g}s",
        ),
        ("client retry", f"up to {s.client_max_restarts} restarts, backoff from {s.client_restart_backoff_s:g}s"),
        ("best metric", best),
        ("run config", describe_run_config_keys(s.run_config_keys)),
        ("hyperparameters", json.dumps(json_format.MessageToDict(task.hyperparameters))),
        ("client config", json.dumps(json_format.MessageToDict(task.client_config))),
        ("enrolled", ", ".join(task.enrolled_client_ids)),
        ("selected", ", ".join(task.selected_client_ids)),
        ("runs take", describe_label_selection(task) if task.HasField("label_selection")
         else "the selected clients"),
    ]:
        table.add_row(key, value)
    console.print(table)


BEST_METRIC_HELP = ("metric that picks the 'best' model: central.NAME, train.NAME or evaluate.NAME (aggregated "
                    "by the strategy), client.train.NAME or client.evaluate.NAME (mean over the round's clients)")
RUN_CONFIG_KEY_HELP = (f"SETTING=KEY (repeatable): the app's run-config key receiving a strategy setting "
                       f"({', '.join(RUN_CONFIG_SETTINGS)}); an empty KEY = the app hard-codes it, FedOps does "
                       f"not pass it")


# The options task create and task update share.
AppPath = Annotated[str | None, typer.Option("--app", help="local Flower app directory")]
GitUrl = Annotated[str | None, typer.Option(help="git URL of the Flower app")]
GitRef = Annotated[str, typer.Option(help="git branch/tag/commit")]
GitSubdir = Annotated[str, typer.Option(help="app directory inside the repository")]
Rounds = Annotated[int | None, typer.Option(min=1)]
MinClients = Annotated[int | None, typer.Option(min=1, help="quorum per round")]
Fraction = Annotated[float | None, typer.Option(min=0.0, max=1.0)]
RoundTimeout = Annotated[float | None, typer.Option(min=0.0, help="seconds")]
ClientMaxRestarts = Annotated[int | None, typer.Option(
    min=0, max=MAX_CLIENT_RESTARTS, help="restarts of a client's failed SuperNode per run (0 = never)")]
ClientRestartBackoff = Annotated[float | None, typer.Option(
    min=0.01, max=MAX_RESTART_BACKOFF_S, help="seconds before the first restart; doubles up to 30 s")]
BestMetric = Annotated[str | None, typer.Option(help=BEST_METRIC_HELP)]
Select = Annotated[str | None, typer.Option(
    "--select", help="runs take clients with these labels (key=value,key=value; '' = any label) instead of the "
    "selected ones")]
Count = Annotated[int, typer.Option(min=0, help="with --select: clients per run (0 = every matching free one)")]


def task_label_selection(select: str | None, count: int) -> common_pb2.LabelSelection | None:
    """The task's label selection from --select/--count (None when --select is not given)."""
    if select is None:
        if count:
            raise typer.BadParameter("--count goes with --select", param_hint="--count")
        return None
    return label_selection(parse_selector_option(select), count)


def app_reference(app_path: str | None, git_url: str | None, git_ref: str, git_subdir: str) -> common_pb2.AppReference:
    """The task's app: a local directory (made absolute) or a git source."""
    if app_path:
        return common_pb2.AppReference(local_path=str(Path(app_path).resolve()))
    return common_pb2.AppReference(git=common_pb2.GitSource(url=git_url or "", ref=git_ref, subdirectory=git_subdir))


def strategy_fields(rounds: int | None, min_clients: int | None, fraction_train: float | None,
                    fraction_evaluate: float | None, round_timeout: float | None, client_max_restarts: int | None,
                    client_restart_backoff: float | None, best_metric: str | None,
                    lower_is_better: bool | None) -> dict[str, Any]:
    """The StrategySettings fields of the options given (None: not given, not sent)."""
    fields = {"rounds": rounds, "min_clients": min_clients, "fraction_train": fraction_train,
              "fraction_evaluate": fraction_evaluate, "round_timeout_s": round_timeout,
              "client_max_restarts": client_max_restarts, "client_restart_backoff_s": client_restart_backoff,
              "best_metric": best_metric, "best_metric_lower_is_better": lower_is_better}
    return {key: value for key, value in fields.items() if value is not None}


@task_app.command("create")
def task_create(
    title: Annotated[str, typer.Option(help="task title")],
    app_path: AppPath = None,
    git_url: GitUrl = None,
    git_ref: GitRef = "main",
    git_subdir: GitSubdir = "",
    description: Annotated[str, typer.Option()] = "",
    tag: Annotated[list[str] | None, typer.Option(help="tag (repeatable)")] = None,
    strategy: Annotated[str | None, typer.Option(help="strategy name (informational)")] = None,
    rounds: Rounds = None,
    min_clients: MinClients = None,
    fraction_train: Fraction = None,
    fraction_evaluate: Fraction = None,
    round_timeout: RoundTimeout = None,
    client_max_restarts: ClientMaxRestarts = None,
    client_restart_backoff: ClientRestartBackoff = None,
    best_metric: BestMetric = None,
    lower_is_better: Annotated[bool | None, typer.Option(
        "--lower-is-better/--higher-is-better", help="direction of --best-metric; default: lower for names "
        "ending in 'loss', else higher")] = None,
    run_config_key: Annotated[list[str] | None, typer.Option(help=RUN_CONFIG_KEY_HELP)] = None,
    hp: Annotated[list[str] | None, typer.Option(help="hyperparameter key=value; ${...} templating allowed")] = None,
    client_config: Annotated[list[str] | None, typer.Option(help="per-client node config key=value")] = None,
    select: Select = None,
    count: Count = 0,
) -> None:
    """Create an FL task. Strategy settings not given are not sent: the service applies its defaults."""
    if bool(app_path) == bool(git_url):
        raise typer.BadParameter("give exactly one of --app or --git-url", param_hint="--app/--git-url")
    given = strategy_fields(rounds, min_clients, fraction_train, fraction_evaluate, round_timeout, client_max_restarts,
                            client_restart_backoff, best_metric, lower_is_better)
    if strategy is not None:
        given["name"] = strategy
    # Only what was given: proto3 zero means unset, and the service refuses a given setting the app cannot receive.
    settings = common_pb2.StrategySettings(run_config_keys=parse_run_config_keys(run_config_key))
    json_format.ParseDict(given, settings)
    task = common_pb2.Task(
        title=title, description=description, tags=tag or [], app=app_reference(app_path, git_url, git_ref, git_subdir),
        strategy=settings,
        hyperparameters=dict_to_struct(parse_pairs(hp, "--hp")),
        client_config=dict_to_struct(parse_pairs(client_config, "--client-config")),
        label_selection=task_label_selection(select, count))
    emit(call("CreateTask", control_pb2.CreateTaskRequest(task=task)), render_task)


@task_app.command("update")
def task_update(
    task_id: str,
    title: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[list[str] | None, typer.Option(help="tag (repeatable; replaces the tags)")] = None,
    app_path: AppPath = None,
    git_url: GitUrl = None,
    git_ref: GitRef = "main",
    git_subdir: GitSubdir = "",
    rounds: Rounds = None,
    min_clients: MinClients = None,
    fraction_train: Fraction = None,
    fraction_evaluate: Fraction = None,
    round_timeout: RoundTimeout = None,
    client_max_restarts: ClientMaxRestarts = None,
    client_restart_backoff: ClientRestartBackoff = None,
    best_metric: BestMetric = None,
    lower_is_better: Annotated[bool | None, typer.Option(
        "--lower-is-better/--higher-is-better", help="direction of the best metric; with a new --best-metric and "
        "neither flag: lower for names ending in 'loss', else higher")] = None,
    run_config_key: Annotated[list[str] | None, typer.Option(
        help=RUN_CONFIG_KEY_HELP + " (merged into the task's)")] = None,
    hp: Annotated[list[str] | None, typer.Option(help="hyperparameter key=value (merged into the task's)")] = None,
    unset_hp: Annotated[list[str] | None, typer.Option(help="hyperparameter key to remove")] = None,
    select: Select = None,
    count: Count = 0,
    no_select: Annotated[bool, typer.Option(
        "--no-select", help="drop the label selection: runs take the selected clients again")] = False,
) -> None:
    """Edit a task: only the given settings change."""
    if app_path and git_url:
        raise typer.BadParameter("give at most one of --app or --git-url", param_hint="--app/--git-url")
    app_ref = app_reference(app_path, git_url, git_ref, git_subdir) if app_path or git_url else None
    changes = strategy_fields(rounds, min_clients, fraction_train, fraction_evaluate, round_timeout,
                              client_max_restarts, client_restart_backoff, best_metric, lower_is_better)
    current = call("GetTask", control_pb2.GetTaskRequest(task_id=task_id))
    try:
        request = task_update_request(
            current, title=title, description=description, tags=tag, app=app_ref,
            strategy=changes,
            run_config_keys=parse_run_config_keys(run_config_key),
            hyperparameters=parse_pairs(hp, "--hp") if hp else None, unset_hyperparameters=unset_hp,
            label_selection=task_label_selection(select, count), clear_label_selection=no_select)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="OPTIONS") from None
    emit(call("UpdateTask", request), render_task)


@task_app.command("list")
def task_list(tag: Annotated[str, typer.Option()] = "") -> None:
    """List tasks, newest first."""
    response = call("ListTasks", control_pb2.ListTasksRequest(tag=tag))

    def render(resp: control_pb2.ListTasksResponse) -> None:
        tasks = sorted(resp.tasks, key=lambda t: t.created_at.ToDatetime(), reverse=True)
        print_table("Tasks (newest first)", [
            Column("id", ID), Column("title", TEXT), Column("rounds", NUMBER, 3), Column("enrolled", NUMBER, 4),
            Column("selected", NUMBER, 2), Column("tags", TEXT, 1)],
            [[t.id, t.title, str(t.strategy.rounds), str(len(t.enrolled_client_ids)), str(len(t.selected_client_ids)),
              ", ".join(t.tags)] for t in tasks])

    emit(response, render)


@task_app.command("show")
def task_show(task_id: str) -> None:
    """Show one task."""
    emit(call("GetTask", control_pb2.GetTaskRequest(task_id=task_id)), render_task)


@task_app.command("select")
def task_select(task_id: str, client_ids: Annotated[list[str], typer.Argument(help="clients to take part")]) -> None:
    """Select the clients that take part in the task's runs."""
    emit(call("SetTaskMembership", control_pb2.SetTaskMembershipRequest(task_id=task_id, client_ids=client_ids)),
         render_task)


@task_app.command("delete")
def task_delete(task_id: str) -> None:
    """Delete a task that has no runs."""
    emit(call("DeleteTask", control_pb2.DeleteTaskRequest(task_id=task_id)),
         lambda r: say(f"deleted {task_id}"))
