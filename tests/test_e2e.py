"""End-to-end tests with real processes: control service, agents, SuperLink, SuperNodes."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedops_common.grpc_channel import control_channel
from fedops_common.proc import scan_processes
from fedops_common.proto import common_pb2, control_pb2, control_pb2_grpc
from fedops_control.devstack import LocalStack
from fedops_control.run.launcher import CLAIMED_BY, flwr_home_of
from tests.conftest import DIGITS_APP

pytestmark = pytest.mark.e2e


def create_task(stack: LocalStack, rounds: int, timeout_s: float = 120, quorum: int = 2) -> str:
    task = stack.ctl_json("task", "create", "--title", f"e2e {rounds} rounds", "--app", str(DIGITS_APP),
                          "--rounds", str(rounds), "--min-clients", str(quorum), "--round-timeout", str(timeout_s),
                          "--hp", "local-epochs=1", "--hp", "learning-rate=0.1")
    return str(task["id"])


def start_clients(stack: LocalStack, task_id: str, data: list[Path], prefix: str,
                  first_also_in: list[str] | None = None, both_in: str = "") -> list[str]:
    """Start one agent per data path, enrolled in ``task_id`` (the first one also in ``first_also_in``,
    every one also in ``both_in``)."""
    also = [both_in] if both_in else []
    for i, path in enumerate(data):
        stack.start_agent(f"{prefix}{i}", [task_id, *also, *(first_also_in or [])] if i == 0 else [task_id, *also],
                          path)
    clients = [stack.client_id(f"{prefix}{i}") for i in range(len(data))]
    wait_for(lambda: all(c["state"] == "CLIENT_STATE_ONLINE"
                         for c in stack.ctl_json("clients", "list", "--task", task_id)["clients"]), 30)
    stack.ctl("task", "select", task_id, *clients)
    return clients


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def get_run(stack: LocalStack, run_id: str) -> dict:
    return stack.ctl_json("run", "show", run_id)


def wait_finished(stack: LocalStack, run_id: str, timeout_s: float = 400) -> dict:
    return wait_for(lambda: (r := get_run(stack, run_id)).get("state") == "RUN_STATE_FINISHED" and r, timeout_s, 1)


def flower_processes(marker: str) -> list[str]:
    """Flower processes whose command line or FLWR_HOME names ``marker`` ("PID FLWR_HOME=… ARGS"): a
    SuperLink with in-memory state and no TLS names no file in its command line."""
    found = []
    for pid, proc, cmdline in scan_processes():
        args = cmdline.replace(b"\0", b" ").decode(errors="replace")
        if "flower-" in args or "flwr-" in args:
            line = f"{pid} FLWR_HOME={flwr_home_of(proc) or ''} {args}"
            if marker in line:
                found.append(line)
    return found


def stray_processes(stack: LocalStack) -> list[str]:
    """Flower processes under the stack's root but the warm spare SuperLink (which no run has taken).
    Processes are listed first: a spare started after that is in the spare list already."""
    found = flower_processes(str(stack.root))
    spares = [f"{spare}/" for spare in (stack.root / "control" / "superlinks").glob("spare-*")
              if not (spare / CLAIMED_BY).exists()]
    return [line for line in found if not any(spare in line for spare in spares)]


def wait_gone(stack: LocalStack, run_id: str, timeout_s: float) -> None:
    """Wait until no Flower process of the run and none under the stack (but the spare's) is left;
    else fail naming them."""
    left: list[str] = []

    def gone() -> bool:
        left[:] = [*flower_processes(run_id), *stray_processes(stack)]
        return not left

    try:
        wait_for(gone, timeout_s)
    except AssertionError as error:
        raise AssertionError(f"processes left {timeout_s} s after the run ended: {left}") from error


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, digits_data: list[Path]
) -> Iterator[tuple[LocalStack, str, list[str]]]:
    """Control + 3 agents enrolled in a 3-round task."""
    local = LocalStack(tmp_path_factory.mktemp("stack"))
    try:
        local.start_control()
        task_id = create_task(local, rounds=3)
        clients = start_clients(local, task_id, digits_data, "c")
        yield local, task_id, clients
    finally:
        local.stop()


def test_full_run_learns_and_registers_models(stack, tmp_path: Path) -> None:
    local, task_id, clients = stack
    run = local.ctl_json("run", "start", task_id)
    watch = local.ctl("run", "watch", run["id"], timeout_s=500)
    assert "round 3/3 finished" in watch.stdout
    final = wait_finished(local, run["id"])
    assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
    rounds = final["rounds"]
    assert [r["number"] for r in rounds] == [1, 2, 3]
    accuracy = [final["initial_central_metrics"]["accuracy"]] + [r["central_metrics"]["accuracy"] for r in rounds]
    assert accuracy[-1] > accuracy[1] > accuracy[0], accuracy
    for r in rounds:
        assert sorted(r["responded_client_ids"]) == sorted(clients)
        assert "train_loss" in r["train_metrics"] and "eval_acc" in r["evaluate_metrics"]
        trained = {c["client_id"] for c in r["client_results"] if c["phase"] == "train" and not c.get("error")}
        assert trained == set(clients)
        assert all(c["duration_s"] > 0 for c in r["client_results"])
    models = local.ctl_json("models", "list", "--run", run["id"])["models"]
    assert sorted(m["round"] for m in models) == [1, 2, 3]
    by_round = {m["round"]: m for m in models}
    assert by_round[2]["parent_id"] == by_round[1]["id"] and by_round[3]["parent_id"] == by_round[2]["id"]
    assert sorted(by_round[3]["participant_client_ids"]) == sorted(clients)
    assert "latest" in by_round[3]["tags"]
    best = local.ctl_json("models", "show", "best", "--task", task_id)
    assert best["metrics"]["central.accuracy"] == max(m["metrics"]["central.accuracy"] for m in models)
    out = tmp_path / "model.npz"
    download = local.ctl_json("models", "download", "latest", "--task", task_id, "--out", str(out))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == download["sha256"] == by_round[3]["sha256"]
    # Flower's own record of the ServerApp, read before the SuperLink (its state in memory) stopped.
    events = [json.loads(line) for line in local.ctl("--output", "json", "run", "watch", run["id"]).stdout.splitlines()]
    finished = [e for e in events if e["kind"] == "run_finished"][0]
    assert 0 < finished["data"]["flower_serverapp_s"] < 500, finished
    diagnosis = local.ctl_json("run", "diagnose", run["id"])
    assert "completed" in diagnosis["summary"]
    assert flower_processes(run["id"]) == [] and stray_processes(local) == []
    # The run took the warm spare SuperLink, started before the run was.
    link = local.root / "control" / "runs" / run["id"] / "superlink"
    assert link.is_symlink() and (link.resolve().parent / CLAIMED_BY).read_text() == run["id"]
    assert not (link / "state.db").exists()  # Flower's in-memory state (--superlink-state-on-disk: a file)
    # Each agent forked its SuperNode from its preloaded fork server (the default).
    starts = [json.loads(line) for path in (local.root / "agents").glob("*/telemetry/logs/*.jsonl")
              for line in path.read_text().splitlines() if '"SuperNode started"' in line and run["id"] in line]
    assert len(starts) == 3 and all(entry["labels.forked"] is True for entry in starts), starts


def test_resume_from_stored_model(stack) -> None:
    local, task_id, _ = stack
    latest = local.ctl_json("models", "show", "latest", "--task", task_id)
    run = local.ctl_json("run", "start", task_id, "--resume-from", "latest")
    final = wait_finished(local, run["id"])
    assert final["outcome"] == "RUN_OUTCOME_COMPLETED"
    assert final["resumed_from_model_id"] == latest["id"]
    # The resumed run starts where the stored model was, not from scratch (~0.1).
    assert final["initial_central_metrics"]["accuracy"] == pytest.approx(latest["metrics"]["central.accuracy"])
    first = local.ctl_json("models", "list", "--run", run["id"])["models"]
    assert min(first, key=lambda m: m["round"])["parent_id"] == latest["id"]


def test_cooperative_stop_after_current_round(stack) -> None:
    local, task_id, _ = stack
    run = local.ctl_json("run", "start", task_id, "--hp", "num-server-rounds=6")
    wait_for(lambda: get_run(local, run["id"]).get("current_round", 0) >= 1, 120)
    local.ctl("run", "stop", run["id"])
    final = wait_finished(local, run["id"], 200)
    assert final["outcome"] == "RUN_OUTCOME_STOPPED"
    finished = [r for r in final["rounds"] if r["phase"] == "done"]
    assert 1 <= len(finished) < 6
    assert len(local.ctl_json("models", "list", "--run", run["id"])["models"]) == len(finished)
    wait_gone(local, run["id"], 30)


def test_hard_stop_leaves_no_processes(stack) -> None:
    local, task_id, clients = stack
    run = local.ctl_json("run", "start", task_id)
    wait_for(lambda: get_run(local, run["id"]).get("state") == "RUN_STATE_RUNNING", 60)
    local.ctl("run", "stop", run["id"], "--hard")
    final = get_run(local, run["id"])
    assert final["state"] == "RUN_STATE_FINISHED" and final["outcome"] == "RUN_OUTCOME_STOPPED"
    wait_gone(local, run["id"], 30)
    # Clients are free again for the next run.
    wait_for(lambda: all(not c.get("current_run_id") for c in local.ctl_json("clients", "list")["clients"]), 30)


def test_hard_stop_while_starting_stays_stopped(stack) -> None:
    """A stop that comes while the run is still starting wins: the launch does not bring it back
    to running, command agents or leave processes."""
    local, task_id, _ = stack
    run = local.ctl_json("run", "start", task_id)
    local.ctl("run", "stop", run["id"], "--hard")
    deadline = time.monotonic() + 10  # longer than a launch takes
    while time.monotonic() < deadline:
        final = get_run(local, run["id"])
        assert final["state"] == "RUN_STATE_FINISHED" and final["outcome"] == "RUN_OUTCOME_STOPPED", final
        time.sleep(0.5)
    assert final.get("current_round", 0) == 0  # no round ever started
    wait_gone(local, run["id"], 30)
    wait_for(lambda: all(not c.get("current_run_id") for c in local.ctl_json("clients", "list")["clients"]), 30)


def test_bad_input_is_refused_with_the_field(stack) -> None:
    local, task_id, _ = stack
    result = local.ctl("task", "create", "--title", "bad", "--app", str(DIGITS_APP), "--hp", "nope=1", check=False)
    assert result.returncode == 2 and "hyperparameters.nope" in result.stderr
    result = local.ctl("task", "create", "--title", "bad", "--app", "/nonexistent", check=False)
    assert result.returncode == 2 and "app.local_path" in result.stderr
    result = local.ctl("task", "create", "--title", "bad", "--app", str(DIGITS_APP), "--rounds", "0", check=False)
    assert result.returncode == 2
    for flag, value in (("--client-max-restarts", "-1"), ("--client-restart-backoff", "0")):
        result = local.ctl("task", "update", task_id, flag, value, check=False)
        assert result.returncode == 2 and flag in result.stderr, result.stderr
    stub = control_pb2_grpc.ControlServiceStub(control_channel(local.control_address, local.security()))
    bad = common_pb2.Task(title="x", app=common_pb2.AppReference(local_path=str(DIGITS_APP)),
                          strategy=common_pb2.StrategySettings(fraction_evaluate=7))
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateTask(control_pb2.CreateTaskRequest(task=bad), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "strategy.fraction_evaluate" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(control_pb2.StartRunRequest(task_id=task_id, client_ids=["client-unknown"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "client_ids" in err.value.details()
    result = local.ctl("run", "show", "run-missing", check=False)
    assert result.returncode == 2 and "NOT_FOUND" in result.stderr


def test_agent_killed_mid_round_run_finishes_with_quorum(tmp_path: Path, digits_data: list[Path]) -> None:
    local = LocalStack(tmp_path / "kill")
    try:
        local.start_control()
        task_id = create_task(local, rounds=3, timeout_s=25)
        clients = start_clients(local, task_id, digits_data, "k")
        run = local.ctl_json("run", "start", task_id)
        wait_for(lambda: any(r.get("phase") == "train" for r in get_run(local, run["id"]).get("rounds", [])), 120, 0.2)
        local.kill_agent("k2")
        diagnosis = wait_for(lambda: (d := local.ctl_json("run", "diagnose", run["id"])).get("missing") and d, 60, 0.5)
        assert any(m["client_id"] == clients[2] for m in diagnosis["missing"]), diagnosis
        final = wait_finished(local, run["id"])
        assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
        assert len(final["rounds"]) == 3
        assert any(clients[2] in r.get("failed_client_ids", []) for r in final["rounds"])
        assert all(len(r["responded_client_ids"]) >= 2 for r in final["rounds"])
        killed = local.ctl_json("clients", "show", clients[2])  # `clients show` prints the Client itself
        # Its agent is gone, so it is offline (not failed), and the reason says which step it left in.
        assert killed["state"] == "CLIENT_STATE_OFFLINE", killed
        assert killed["state_reason"].startswith("round ") and "left the run" in killed["state_reason"], killed
    finally:
        local.stop()
