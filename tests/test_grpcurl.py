"""The README's grpcurl recipes, run with the real grpcurl against a real control service.

Everything goes through server reflection: no local .proto files.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedops_control.devstack import LocalStack
from tests.backends import BACKENDS
from tests.conftest import DIGITS_APP, control_stack
from tests.test_e2e import wait_for

pytestmark = pytest.mark.e2e
GRPCURL = BACKENDS / "bin" / "grpcurl"
SVC = "fedops.v1.ControlService"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, digits_data: list[Path]) -> Iterator[LocalStack]:
    if not GRPCURL.exists():
        raise AssertionError(f"grpcurl is not installed at {GRPCURL}: run scripts/install_backends.sh")
    with control_stack(tmp_path_factory.mktemp("grpcurl")) as local:
        yield local


def grpcurl(stack: LocalStack, method: str, data: dict[str, Any] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [str(GRPCURL), "-plaintext", "-format", "json", "-H", f"authorization: Bearer {stack.admin_token}"]
    if data is not None:
        args += ["-d", json.dumps(data)]
    result = subprocess.run([*args, stack.control_address, *method.split()], capture_output=True, text=True,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"grpcurl {method} failed ({result.returncode}): {result.stderr}")
    return result


def call(stack: LocalStack, method: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return json.loads(grpcurl(stack, f"{SVC}/{method}", data).stdout or "{}")


def task_body(title: str, rounds: int) -> dict[str, Any]:
    return {"task": {"title": title, "tags": ["grpcurl"], "app": {"localPath": str(DIGITS_APP)},
                     "strategy": {"rounds": rounds, "minClients": 2, "roundTimeoutS": 120},
                     "hyperparameters": {"local-epochs": 1, "learning-rate": 0.1}}}


def test_reflection_lists_and_describes_services(stack: LocalStack) -> None:
    services = grpcurl(stack, "list").stdout.split()
    assert {SVC, "fedops.v1.AgentService", "fedops.v1.ObserverService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
    described = grpcurl(stack, f"describe {SVC}").stdout
    assert "rpc StartRun ( .fedops.v1.StartRunRequest ) returns ( .fedops.v1.Run );" in described
    assert "rpc WatchRun ( .fedops.v1.WatchRunRequest ) returns ( stream .fedops.v1.RunEvent );" in described
    health = json.loads(grpcurl(stack, "grpc.health.v1.Health/Check", {"service": SVC}).stdout)
    assert health == {"status": "SERVING"}


def test_task_crud_and_bad_input(stack: LocalStack) -> None:
    task = call(stack, "CreateTask", task_body("grpcurl crud", 1))
    assert task["id"].startswith("task-") and task["strategy"]["rounds"] == 1
    updated = call(stack, "UpdateTask", {"task": {"id": task["id"], "title": "renamed", "strategy": {
        "rounds": 4, "minClients": 2, "roundTimeoutS": 60}}, "updatePaths": ["title", "strategy"]})
    assert updated["title"] == "renamed" and updated["strategy"]["rounds"] == 4
    assert call(stack, "GetTask", {"taskId": task["id"]})["title"] == "renamed"
    bad = grpcurl(stack, f"{SVC}/CreateTask", {"task": {"title": "x", "app": {"localPath": str(DIGITS_APP)},
                                                       "strategy": {"rounds": -1, "minClients": 1}}}, check=False)
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr and "strategy.rounds" in bad.stderr
    assert call(stack, "DeleteTask", {"taskId": task["id"]}) == {"deleted": True}
    missing = grpcurl(stack, f"{SVC}/GetTask", {"taskId": task["id"]}, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_select_start_watch_diagnose_and_stop(stack: LocalStack, digits_data: list[Path]) -> None:
    task_id = call(stack, "CreateTask", task_body("grpcurl run", 1))["id"]
    for i, path in enumerate(digits_data[:2]):
        stack.start_agent(f"g{i}", [task_id], path)
    clients = [stack.client_id(f"g{i}") for i in range(2)]
    listed = wait_for(lambda: (c := call(stack, "ListClients", {"taskId": task_id}).get("clients", []))
                      and all(x["state"] == "CLIENT_STATE_ONLINE" for x in c) and len(c) == 2 and c, 30)
    assert {c["id"] for c in listed} == set(clients)
    selected = call(stack, "SetTaskMembership", {"taskId": task_id, "clientIds": clients})
    assert sorted(selected["selected_client_ids"]) == sorted(clients)

    run = call(stack, "StartRun", {"taskId": task_id})
    diagnosis = call(stack, "DiagnoseRun", {"runId": run["id"]})
    assert diagnosis["run_id"] == run["id"] and diagnosis["summary"]
    # WatchRun replays and streams events until the run finishes: grpcurl prints one JSON object each
    # (grpcurl prints proto field names; it accepts JSON or proto names in requests).
    stream = grpcurl(stack, f"{SVC}/WatchRun", {"runId": run["id"]}).stdout
    events = [json.loads(chunk) for chunk in stream.replace("}\n{", "}\x00{").split("\x00") if chunk.strip()]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_created" and kinds[-1] == "run_finished" and "round_finished" in kinds
    finished = call(stack, "GetRun", {"runId": run["id"]})
    assert finished["state"] == "RUN_STATE_FINISHED" and finished["outcome"] == "RUN_OUTCOME_COMPLETED"
    models = call(stack, "ListModels", {"taskId": task_id})["models"]
    assert [m["round"] for m in models] == [1]

    second = call(stack, "StartRun", {"taskId": task_id})
    stopped = call(stack, "StopRun", {"runId": second["id"], "mode": "STOP_MODE_HARD"})
    assert stopped["state"] == "RUN_STATE_FINISHED" and stopped["outcome"] == "RUN_OUTCOME_STOPPED"
    again = grpcurl(stack, f"{SVC}/StopRun", {"runId": second["id"]}, check=False)
    assert again.returncode != 0 and "FailedPrecondition" in again.stderr
