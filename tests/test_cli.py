"""`fedopsctl` as a user runs it (a subprocess) against a real control service: the service's text
printed verbatim, task strategy options, and `run watch` exit codes from real runs with agents."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedops_common.proc import console_script
from fedops_control.devstack import LocalStack
from tests.conftest import DIGITS_APP, control_stack
from tests.test_e2e import wait_for

pytestmark = pytest.mark.e2e
FAILING_APP = Path(__file__).resolve().parent / "apps" / "failing"
FAILING_APP_KEYS = "fraction-evaluate, fraction-train, min-nodes, num-server-rounds, round-timeout"
COLUMNS = 120  # rich's width when not on a terminal; messages longer than this must stay on one line


def ctl(stack: LocalStack, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """`fedopsctl --control ADDR --token-file FILE ARGS` in a subprocess, never raising on its exit code."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FEDOPS_")}
    env["COLUMNS"] = str(COLUMNS)
    return subprocess.run([console_script("fedopsctl"), "--control", stack.control_address,
                           "--token-file", str(stack.admin_token_file), *args],
                          capture_output=True, text=True, timeout=timeout_s, env=env)


def ctl_json(stack: LocalStack, *args: str) -> Any:
    result = ctl(stack, "--output", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with control_stack(tmp_path_factory.mktemp("cli")) as local:
        yield local


# ------------------------------------------------------------------ the service's own ports
@pytest.mark.parametrize("option", ["--listen", "--metrics-listen"])
def test_a_second_service_on_a_port_in_use_exits_2_naming_the_option(stack: LocalStack, tmp_path: Path,
                                                                     option: str) -> None:
    """gRPC shares a port by default (SO_REUSEPORT): a second service on the first one's port would
    answer some of its clients. It must refuse to start, and the first must keep answering."""
    taken = {"--listen": stack.control_address, "--metrics-listen": stack.metrics_address}
    ports = {"--listen": "127.0.0.1:0", "--metrics-listen": "127.0.0.1:0", option: taken[option]}
    second = subprocess.run([console_script("fedops-control"), "--data-dir", str(tmp_path / "second"), "--no-auth",
                             *(word for pair in ports.items() for word in pair)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"Invalid value for {option}: cannot " in second.stderr and taken[option] in second.stderr, second.stderr
    assert ctl(stack, "task", "list").returncode == 0


# ------------------------------------------------------------------ the service's text, verbatim
def test_server_error_with_brackets_is_printed_intact(stack: LocalStack) -> None:
    result = ctl(stack, "task", "create", "--title", "bad", "--app", str(FAILING_APP), "--hp", "nosuchkey=1")
    assert result.returncode == 2, result.stderr
    # One line, as the service wrote it: no markup eaten, no wrapping at the console width.
    expected = (f"error: INVALID_ARGUMENT: hyperparameters.nosuchkey: not a key of the app's "
                f"[tool.flwr.app.config] ({FAILING_APP_KEYS})")
    assert len(expected) > COLUMNS
    assert result.stderr.strip().splitlines()[-1] == expected, result.stderr


def test_table_cells_are_not_read_as_markup(stack: LocalStack) -> None:
    title = "[bold]x[/bold] :smile: [red]"
    task = ctl_json(stack, "task", "create", "--title", title, "--app", str(FAILING_APP),
                    "--description", "[link=http://example.invalid]d[/link]")
    shown = ctl(stack, "task", "show", task["id"])
    assert shown.returncode == 0, shown.stderr
    assert title in shown.stdout and "[link=http://example.invalid]d[/link]" in shown.stdout, shown.stdout
    listed = ctl(stack, "task", "list")
    assert "[bold]x[/bold]" in listed.stdout, listed.stdout
    deleted = ctl(stack, "task", "delete", task["id"])
    assert deleted.returncode == 0 and f"deleted {task['id']}" in deleted.stdout


def test_access_commands_print_names_as_given(stack: LocalStack) -> None:
    name = "[ops] team :smile:"
    created = ctl(stack, "token", "create", "--name", name, "--role", "viewer")
    assert created.returncode == 0 and f"for {name} (role viewer)" in created.stdout, created.stdout
    token = created.stdout.strip().splitlines()[-1]
    listed = ctl(stack, "token", "list", "--kind", "api")
    assert "[ops]" in listed.stdout, listed.stdout
    env = {key: value for key, value in os.environ.items() if not key.startswith("FEDOPS_")}
    whoami = subprocess.run([console_script("fedopsctl"), "--control", stack.control_address, "--token", token,
                             "whoami"], capture_output=True, text=True, timeout=60, env=env)
    assert whoami.returncode == 0 and whoami.stdout.startswith(f"{name} - role viewer"), whoami.stdout


# ------------------------------------------------------------------ task strategy options
def test_run_config_keys_and_best_metric_round_trip(stack: LocalStack) -> None:
    created = ctl_json(stack, "task", "create", "--title", "keys", "--app", str(DIGITS_APP),
                       "--run-config-key", "rounds=num-server-rounds", "--run-config-key", "round_timeout_s=",
                       "--best-metric", "central.loss", "--lower-is-better")
    strategy = created["strategy"]
    assert strategy["run_config_keys"]["rounds"] == "num-server-rounds"
    assert strategy["run_config_keys"]["round_timeout_s"] == ""
    assert strategy["best_metric"] == "central.loss" and strategy["best_metric_lower_is_better"] is True
    assert ctl_json(stack, "task", "show", created["id"])["strategy"] == strategy
    shown = ctl(stack, "task", "show", created["id"]).stdout
    assert "rounds -> run config key num-server-rounds" in shown, shown
    assert "round_timeout_s: hard-coded by the app (not passed)" in shown, shown
    assert "central.loss (lower is better)" in shown, shown

    # update merges into the task's map; a new best metric without a direction drops the old direction
    updated = ctl_json(stack, "task", "update", created["id"], "--run-config-key", "fraction_train=fraction-train",
                       "--best-metric", "client.evaluate.eval_acc")["strategy"]
    assert updated["run_config_keys"]["fraction_train"] == "fraction-train"
    assert updated["run_config_keys"]["round_timeout_s"] == ""
    assert updated["run_config_keys"]["rounds"] == "num-server-rounds"
    assert updated["best_metric"] == "client.evaluate.eval_acc"
    assert not updated.get("best_metric_lower_is_better", False)
    direction = ctl_json(stack, "task", "update", created["id"], "--lower-is-better")["strategy"]
    assert direction["best_metric"] == "client.evaluate.eval_acc" and direction["best_metric_lower_is_better"] is True


@pytest.mark.parametrize("value, message", [("rounds", "SETTING=KEY"), ("epochs=local-epochs", "unknown setting")])
def test_bad_run_config_key_is_refused_before_the_service(stack: LocalStack, value: str, message: str) -> None:
    result = ctl(stack, "task", "create", "--title", "bad", "--app", str(DIGITS_APP), "--run-config-key", value)
    assert result.returncode == 2 and message in result.stderr and "--run-config-key" in result.stderr, result.stderr
    task = ctl_json(stack, "task", "create", "--title", "ok", "--app", str(DIGITS_APP))
    result = ctl(stack, "task", "update", task["id"], "--run-config-key", value)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_strategy_settings_not_given_are_not_sent(stack: LocalStack, tmp_path: Path) -> None:
    """An app whose run config has no `fraction-evaluate` key: a create without --fraction-evaluate
    passes (no default is sent), one with it is refused naming the setting. Needs the service side
    that refuses a given setting the app cannot receive."""
    app = tmp_path / "app"
    shutil.copytree(FAILING_APP, app)
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("fraction-evaluate = 1.0\n", ""))
    ctl_json(stack, "task", "create", "--title", "no fraction-evaluate", "--app", str(app))
    result = ctl(stack, "task", "create", "--title", "given", "--app", str(app), "--fraction-evaluate", "0.5")
    assert result.returncode == 2 and "strategy.fraction_evaluate" in result.stderr, result.stderr
    assert "[tool.flwr.app.config]" in result.stderr, result.stderr


def test_best_metric_is_validated_and_its_direction_defaults_by_name(stack: LocalStack) -> None:
    """Needs the service side: best-metric validation, and lower-is-better for names ending in 'loss'."""
    result = ctl(stack, "task", "create", "--title", "bad", "--app", str(DIGITS_APP), "--best-metric", "accuracy")
    assert result.returncode == 2 and "strategy.best_metric" in result.stderr, result.stderr
    loss = ctl_json(stack, "task", "create", "--title", "loss", "--app", str(DIGITS_APP),
                    "--best-metric", "client.train.train_loss")["strategy"]
    assert loss["best_metric"] == "client.train.train_loss" and loss["best_metric_lower_is_better"] is True
    accuracy = ctl_json(stack, "task", "create", "--title", "acc", "--app", str(DIGITS_APP),
                        "--best-metric", "evaluate.eval_acc")["strategy"]
    assert not accuracy.get("best_metric_lower_is_better", False)


# ------------------------------------------------------------------ `run watch` exit codes (real runs)
@pytest.fixture(scope="module")
def fleet(stack: LocalStack, digits_data: list[Path]) -> dict[str, str]:
    """Two agents, both in a 1-round digits task and in a task whose ServerApp raises."""
    tasks = {}
    for name, app in (("digits", DIGITS_APP), ("failing", FAILING_APP)):
        tasks[name] = ctl_json(stack, "task", "create", "--title", f"cli {name}", "--app", str(app),
                               "--rounds", "1", "--min-clients", "2", "--round-timeout", "120",
                               *(["--hp", "local-epochs=1"] if name == "digits" else []))["id"]
    for i, path in enumerate(digits_data[:2]):
        stack.start_agent(f"cli{i}", list(tasks.values()), path)
    clients = [stack.client_id(f"cli{i}") for i in range(2)]
    wait_for(lambda: all(c["state"] == "CLIENT_STATE_ONLINE"
                         for c in ctl_json(stack, "clients", "list", "--task", tasks["digits"])["clients"]), 30)
    for task_id in tasks.values():
        assert ctl(stack, "task", "select", task_id, *clients).returncode == 0
    return tasks


def start_run(stack: LocalStack, task_id: str) -> str:
    """Start a run once every client is free of the previous one."""
    wait_for(lambda: all(not c.get("current_run_id") for c in ctl_json(stack, "clients", "list")["clients"]), 60)
    return str(ctl_json(stack, "run", "start", task_id)["id"])


def assert_watch_exits(stack: LocalStack, run_id: str, code: int, outcome: str) -> None:
    """`run watch` in table and JSON form exits ``code``; the outcome is the last line on stderr."""
    for output in ("table", "json"):
        result = ctl(stack, "--output", output, "run", "watch", run_id)
        assert result.returncode == code, (output, result.stdout, result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"run {run_id} {outcome}"), (output, result.stderr)
        if output == "json":
            events = [json.loads(line) for line in result.stdout.splitlines()]
            assert events and events[-1]["kind"] == "run_finished", events


def test_watch_exit_code_of_a_completed_run(stack: LocalStack, fleet: dict[str, str]) -> None:
    wait_for(lambda: all(not c.get("current_run_id") for c in ctl_json(stack, "clients", "list")["clients"]), 60)
    result = ctl(stack, "run", "start", fleet["digits"], "--watch")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "round 1/1 finished" in result.stdout and "completed, round 1 of 1" in result.stdout, result.stdout
    assert "error" not in result.stderr, result.stderr


def test_watch_exit_code_of_a_hard_stopped_run(stack: LocalStack, fleet: dict[str, str]) -> None:
    run_id = start_run(stack, fleet["digits"])
    assert ctl(stack, "run", "stop", run_id, "--hard").returncode == 0
    assert_watch_exits(stack, run_id, 5, "stopped")


def test_watch_exit_code_of_a_failed_run(stack: LocalStack, fleet: dict[str, str]) -> None:
    run_id = start_run(stack, fleet["failing"])
    assert_watch_exits(stack, run_id, 4, "failed")
