"""Preflight: the agent's check of an app's dependencies and data path, the control side's
collection of answers, and StartRun failing fast with real processes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import time
from pathlib import Path
from unittest import mock

import grpc
import pytest

from fedops_agent.preflight import check
from fedops_common.grpc_channel import control_channel
from fedops_common.proto import agent_pb2, control_pb2, control_pb2_grpc
from fedops_control.agents.sessions import AgentSessions
from fedops_control.errors import InvalidArgument
from fedops_control.run.preflight import (
    NOT_CONNECTED,
    Preflight,
    app_requirements,
    no_answer,
    summary,
)
from tests.conftest import DIGITS_APP, ROOT, control_stack

MISSING = "fedops-no-such-package"
NUMPY = importlib.metadata.version("numpy")
FLWR = importlib.metadata.version("flwr")


# ---------------------------------------------------------------- agent: check()
def test_installed_requirements_pass() -> None:
    assert check(["numpy", f"numpy=={NUMPY}", "numpy>=1.0", f"flwr=={FLWR}"], "", False) == []


def test_missing_package() -> None:
    assert check([f"{MISSING}>=1.0"], "", False) == [f"{MISSING}>=1.0 (not installed)"]


def test_version_mismatch_names_installed_version() -> None:
    assert check(["numpy>=99"], "", False) == [f"numpy>=99 (installed {NUMPY})"]


def test_marker_false_is_skipped_and_true_is_checked() -> None:
    assert check([f'{MISSING}>=1.0; python_version < "3"', f'{MISSING}; extra == "gpu"'], "", False) == []
    assert check([f'{MISSING}>=1.0; python_version >= "3"'], "", False) == [f"{MISSING}>=1.0 (not installed)"]


def test_extras_are_ignored_for_the_installed_check() -> None:
    assert check(["numpy[no-such-extra]>=1.0"], "", False) == []


def test_bad_requirement() -> None:
    assert check(["numpy >>= 1", "numpy"], "", False) == ["numpy >>= 1: not a valid requirement"]


def test_data_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert check([], str(missing), True) == [f"data path {missing} does not exist"]
    assert check([], str(missing), False) == []       # not asked
    assert check([], "", True) == []                  # no data path configured: nothing to check
    assert check([], str(tmp_path), True) == []
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        try:
            assert check([], str(locked), True) == [f"data path {locked} is not readable"]
        finally:
            locked.chmod(0o700)


def test_problems_of_requirements_and_data_path_together(tmp_path: Path) -> None:
    assert check([f"{MISSING}>=1.0", "numpy"], str(tmp_path / "x"), True) == [
        f"{MISSING}>=1.0 (not installed)", f"data path {tmp_path / 'x'} does not exist"]


# ---------------------------------------------------------------- control: summary()
def test_summary() -> None:
    assert summary({"client-a": [], "client-b": []}) == ""
    assert summary({"client-a": [], "client-b": [f"{MISSING}>=1.0 (not installed)", "numpy>=99 (installed 2.1.0)"]}) \
        == f"client-b lacks {MISSING}>=1.0 (not installed), numpy>=99 (installed 2.1.0)"
    problems = {f"client-{i}": [f"{MISSING}>=1.0 (not installed)"] for i in range(3)}
    assert summary(problems) == (f"client-0 lacks {MISSING}>=1.0 (not installed); "
                                 f"client-1 lacks {MISSING}>=1.0 (not installed) (and 1 more client)")
    problems["client-3"] = ["x (not installed)"]
    assert summary(problems).endswith("(and 2 more clients)")
    assert summary({"client-a": ["data path /x does not exist"]}) == "client-a: data path /x does not exist"
    assert summary({"client-a": ["tqdm (not installed)", "data path /x does not exist"]}) \
        == "client-a lacks tqdm (not installed) and data path /x does not exist"


def test_app_requirements(tmp_path: Path) -> None:
    assert app_requirements(DIGITS_APP) == [f"flwr=={FLWR}", "torch>=2.2", "scikit-learn>=1.3", "numpy>=1.26"]
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n', encoding="utf-8")
    assert app_requirements(tmp_path) == []
    with pytest.raises(InvalidArgument):
        app_requirements(tmp_path / "missing")


# ---------------------------------------------------------------- control: Preflight.run()
def test_preflight_collects_answers_times_out_and_reports_offline_clients() -> None:
    async def scenario() -> dict[str, list[str]]:
        agents, preflight = AgentSessions(), Preflight()
        queues = {cid: agents.open(cid) for cid in ("client-ok", "client-bad", "client-silent")}

        async def answer(cid: str, problems: list[str]) -> None:
            command = await queues[cid].get()
            assert command is not None and command.preflight.run_id == "run-1"
            assert list(command.preflight.requirements) == ["numpy"] and command.preflight.check_data_path
            preflight_id = command.preflight.preflight_id
            # Dropped: a client not asked, an unknown preflight; a second answer does not replace the first.
            preflight.on_result("client-stranger", agent_pb2.PreflightResult(preflight_id=preflight_id, problems=["x"]))
            preflight.on_result(cid, agent_pb2.PreflightResult(preflight_id="unknown", problems=["stale"]))
            preflight.on_result(cid, agent_pb2.PreflightResult(preflight_id=preflight_id, problems=problems))
            preflight.on_result(cid, agent_pb2.PreflightResult(preflight_id=preflight_id, problems=["again"]))

        answers = [asyncio.create_task(answer("client-ok", [])),
                   asyncio.create_task(answer("client-bad", ["numpy>=99 (installed 1.0)"]))]
        started = time.monotonic()
        problems = await preflight.run(agents, ["client-ok", "client-bad", "client-silent", "client-offline"],
                                       ["numpy"], "run-1", check_data_path=True, timeout_s=0.5)
        assert time.monotonic() - started < 5
        await asyncio.gather(*answers)
        assert preflight._pending == {}  # nothing left behind
        return problems

    assert asyncio.run(scenario()) == {
        "client-ok": [], "client-bad": ["numpy>=99 (installed 1.0)"], "client-silent": [no_answer(0.5)],
        "client-offline": [NOT_CONNECTED]}
    assert no_answer(10.0) == "no preflight answer within 10 s (agent too old or busy)"


def test_agent_servicer_routes_answers_without_the_database() -> None:
    from fedops_control.server.agent_servicer import AgentServicer

    async def scenario() -> list[str]:
        agents, preflight = AgentSessions(), Preflight()
        queue = agents.open("client-a")
        sessions = mock.Mock(side_effect=AssertionError("no DB work"))
        sessions.begin.side_effect = AssertionError("no DB work")
        servicer = AgentServicer(sessions, agents, mock.Mock(), mock.Mock(), preflight, mock.Mock())
        pending = asyncio.create_task(preflight.run(agents, ["client-a"], [], "run-1", False, timeout_s=5))
        command = await queue.get()
        assert command is not None
        await servicer._apply(
            "client-a",
            agent_pb2.AgentMessage(
                client_id="client-a",
                preflight=agent_pb2.PreflightResult(
                    preflight_id=command.preflight.preflight_id, problems=["x (not installed)"]
                ),
            ),
        )
        return (await pending)["client-a"]

    assert asyncio.run(scenario()) == ["x (not installed)"]


# ---------------------------------------------------------------- agent: the command
def test_agent_answers_a_preflight_command(tmp_path: Path) -> None:
    from fedops_agent.daemon import Agent

    async def scenario() -> agent_pb2.AgentMessage:
        agent = Agent("127.0.0.1:1", [], str(tmp_path / "no-data"), tmp_path, "dev-1")
        agent.client_id = "client-x"
        await agent._handle(agent_pb2.AgentCommand(preflight=agent_pb2.Preflight(
            preflight_id="p1", run_id="run-1", requirements=["numpy", f"{MISSING}>=1.0"], check_data_path=True)))
        return agent._outbox.get_nowait()

    message = asyncio.run(scenario())
    assert message.client_id == "client-x" and message.preflight.preflight_id == "p1"
    assert list(message.preflight.problems) == [f"{MISSING}>=1.0 (not installed)",
                                                f"data path {tmp_path / 'no-data'} does not exist"]


# ---------------------------------------------------------------- real processes
def missing_dependency_app(tmp_path: Path) -> Path:
    """tests/apps/missing_dependency, or (until it exists) a copy of the digits app declaring a
    dependency no agent has."""
    app = ROOT / "tests" / "apps" / "missing_dependency"
    if (app / "pyproject.toml").is_file():
        return app
    app = tmp_path / "missing_dependency"
    shutil.copytree(DIGITS_APP, app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    declared = f'dependencies = ["flwr=={FLWR}",'
    assert declared in text
    pyproject.write_text(text.replace(declared, f'dependencies = ["{MISSING}>=1.0", "flwr=={FLWR}",'),
                         encoding="utf-8")
    return app


@pytest.mark.e2e
def test_start_run_fails_fast_when_an_agent_lacks_a_dependency(tmp_path: Path) -> None:
    app = missing_dependency_app(tmp_path)
    with control_stack(tmp_path / "stack") as stack:
        task = stack.ctl_json("task", "create", "--title", "preflight", "--app", str(app), "--rounds", "1",
                              "--min-clients", "2", "--round-timeout", "60")
        data = [tmp_path / f"data{i}" for i in range(2)]
        for i, path in enumerate(data):
            path.mkdir()
            stack.start_agent(f"p{i}", [task["id"]], path)
        clients = [stack.client_id(f"p{i}") for i in range(2)]
        deadline = time.monotonic() + 30
        while not all(c["state"] == "CLIENT_STATE_ONLINE"
                      for c in stack.ctl_json("clients", "list", "--task", task["id"])["clients"]):
            assert time.monotonic() < deadline, "agents did not come online"
            time.sleep(0.5)
        with control_channel(stack.control_address, stack.security()) as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failure:
                stub.StartRun(control_pb2.StartRunRequest(task_id=task["id"], client_ids=clients), timeout=30)
            assert time.monotonic() - started < 10  # both agents answered: no wait for the timeout
        assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        message = failure.value.details()
        assert message.startswith("preflight failed: ") and MISSING in message, message
        assert any(f"{cid} lacks {MISSING}" in message for cid in clients), message
        assert stack.ctl_json("run", "list").get("runs", []) == []  # no run was created
