"""Runs through `fedops-control --launcher kubernetes` (a real control service and real agents)
against a real API server with kwok (tests/kube.py).

kwok runs no containers, so a run gets as far as its SuperLink pod being ready and then fails at
the first call to the SuperLink's Control API (nothing serves it) - with the reason, and its
namespace deleted. An unschedulable SuperLink pod is diagnosed in plain words while the run starts
and fails the run within the launcher's start timeout; a hard stop while the pod waits deletes the
namespace within seconds (not after the start timeout); a restart of the control service deletes
the namespace of a run that was still starting (an orphan) and fails that run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedops_control.devstack import LocalStack
from fedops_control.run.kubernetes.cluster import Cluster, connect
from tests.conftest import control_stack
from tests.kube import NODE, KubeCluster
from tests.test_e2e import create_task, get_run, start_clients, wait_finished, wait_for

pytestmark = pytest.mark.integration  # real servers and processes, no FL round
START_TIMEOUT_S = 15
LONG_START_TIMEOUT_S = 300  # far beyond what the tests wait: only a prompt stop or restart can end the start


@contextlib.contextmanager
def _k8s_stack(root: Path, kube_cluster: KubeCluster, data: list[Path],
               start_timeout_s: int) -> Iterator[tuple[LocalStack, str]]:
    args = ["--launcher", "kubernetes", "--kubeconfig", str(kube_cluster.admin_kubeconfig),
            "--k8s-image", "fedops-control:test", "--k8s-start-timeout", str(start_timeout_s),
            "--k8s-control-address", "fedops-control.fedops.svc:50051"]
    with control_stack(root, control_args=args) as stack:
        task_id = create_task(stack, rounds=1, timeout_s=30)
        start_clients(stack, task_id, data, "k")
        yield stack, task_id


@pytest.fixture
def k8s_stack(tmp_path: Path, kube_cluster: KubeCluster, digits_data: list[Path]) -> Iterator[tuple[LocalStack, str]]:
    with _k8s_stack(tmp_path / "stack", kube_cluster, digits_data[:2], START_TIMEOUT_S) as stack:
        yield stack


@pytest.fixture
def slow_start_stack(tmp_path: Path, kube_cluster: KubeCluster,
                     digits_data: list[Path]) -> Iterator[tuple[LocalStack, str]]:
    with _k8s_stack(tmp_path / "stack", kube_cluster, digits_data[:2], LONG_START_TIMEOUT_S) as stack:
        yield stack


def _events(stack: LocalStack, run_id: str) -> list[dict]:
    # `run watch` exits non-zero for a failed run: its output is what is read here.
    return list(map(json.loads, stack.ctl("--output", "json", "run", "watch", run_id, check=False).stdout.splitlines()))


def _gone(cluster: Cluster, namespace: str, timeout_s: float = 60) -> None:
    wait_for(lambda: not cluster.namespace_exists(namespace), timeout_s)


def _cordon(kube_cluster: KubeCluster, unschedulable: bool) -> None:
    kube_cluster.core().patch_node(NODE, {"spec": {"unschedulable": unschedulable}})


def test_a_run_gets_as_far_as_its_ready_pod_then_fails_and_its_namespace_goes(
        k8s_stack: tuple[LocalStack, str], kube_cluster: KubeCluster) -> None:
    stack, task_id = k8s_stack
    cluster = Cluster(connect(kube_cluster.admin_kubeconfig))
    run = stack.ctl_json("run", "start", task_id)
    namespace = f"fedops-{run['id']}"
    finished = wait_finished(stack, run["id"], timeout_s=120)
    assert finished["outcome"] == "RUN_OUTCOME_FAILED"
    # Nothing serves the SuperLink's Control API (kwok runs no containers; no cluster DNS here either).
    assert finished["reason"].startswith("launch failed: registering SuperNode")
    statuses = [e["message"] for e in _events(stack, run["id"]) if e["kind"] == "superlink_status"]
    assert f"the SuperLink pod is ready in namespace {namespace}" in statuses
    _gone(cluster, namespace)


def test_an_unschedulable_superlink_is_diagnosed_and_fails_the_run_within_the_timeout(
        k8s_stack: tuple[LocalStack, str], kube_cluster: KubeCluster) -> None:
    stack, task_id = k8s_stack
    cluster = Cluster(connect(kube_cluster.admin_kubeconfig))
    _cordon(kube_cluster, True)
    try:
        started = time.monotonic()
        run = stack.ctl_json("run", "start", task_id)
        diagnosis = wait_for(lambda: "cannot be scheduled" in (d := stack.ctl_json("run", "diagnose", run["id"]))
                             .get("summary", "") and d, 30)
        assert "node(s) were unschedulable" in diagnosis["summary"]
        finished = wait_finished(stack, run["id"], timeout_s=START_TIMEOUT_S + 30)
        assert time.monotonic() - started < START_TIMEOUT_S + 30
        assert finished["outcome"] == "RUN_OUTCOME_FAILED"
        assert f"not ready within {START_TIMEOUT_S}s" in finished["reason"]
        assert "cannot be scheduled" in finished["reason"]
        assert "cannot be scheduled" in stack.ctl_json("run", "diagnose", run["id"])["summary"]
        _gone(cluster, f"fedops-{run['id']}")
    finally:
        _cordon(kube_cluster, False)


def _pending(stack: LocalStack, run_id: str) -> dict:
    """Wait until the run's diagnosis says its SuperLink pod cannot be scheduled (held Pending)."""
    return wait_for(lambda: "cannot be scheduled" in (d := stack.ctl_json("run", "diagnose", run_id))
                    .get("summary", "") and d, 30)


@contextlib.contextmanager
def _run_held_pending(stack: LocalStack, task_id: str, kube_cluster: KubeCluster) -> Iterator[tuple[str, str, Cluster]]:
    """A run of ``task_id`` whose SuperLink pod is held Pending (the node cordoned), its namespace there:
    (run id, namespace, cluster); the node is uncordoned afterwards."""
    cluster = Cluster(connect(kube_cluster.admin_kubeconfig))
    _cordon(kube_cluster, True)
    try:
        run_id = stack.ctl_json("run", "start", task_id)["id"]
        _pending(stack, run_id)
        namespace = f"fedops-{run_id}"
        assert cluster.namespace_exists(namespace)
        yield run_id, namespace, cluster
    finally:
        _cordon(kube_cluster, False)


def test_a_hard_stop_while_the_pod_waits_ends_the_run_and_deletes_the_namespace_within_seconds(
        slow_start_stack: tuple[LocalStack, str], kube_cluster: KubeCluster) -> None:
    stack, task_id = slow_start_stack
    with _run_held_pending(stack, task_id, kube_cluster) as (run_id, namespace, cluster):
        stopped = time.monotonic()
        stack.ctl("run", "stop", "--hard", run_id)
        finished = get_run(stack, run_id)
        assert finished["state"] == "RUN_STATE_FINISHED" and finished["outcome"] == "RUN_OUTCOME_STOPPED"
        assert "(hard)" in finished["reason"]
        _gone(cluster, namespace, timeout_s=20)
        assert time.monotonic() - stopped < 20  # the start timeout is 300 s
        assert get_run(stack, run_id)["outcome"] == "RUN_OUTCOME_STOPPED"  # the given-up start changes nothing


def test_a_restart_fails_the_starting_run_and_deletes_its_orphaned_namespace(
        slow_start_stack: tuple[LocalStack, str], kube_cluster: KubeCluster) -> None:
    """The control service dies (SIGKILL) while a run's pod is held Pending; started again on the same
    state, it fails that run (it was starting) and deletes its namespace, which nobody adopted."""
    stack, task_id = slow_start_stack
    with _run_held_pending(stack, task_id, kube_cluster) as (run_id, namespace, cluster):
        assert stack.control is not None
        os.killpg(stack.control.pid, signal.SIGKILL)
        stack.control.wait(timeout=10)
        assert cluster.namespace_exists(namespace)  # a dead service deletes nothing
        stack.start_control(port=int(stack.control_address.rsplit(":", 1)[1]))
        # It serves before it recovers its runs: the run is failed moments after the port opens.
        finished = wait_for(lambda: (r := get_run(stack, run_id))["state"] == "RUN_STATE_FINISHED" and r, 30)
        assert finished["outcome"] == "RUN_OUTCOME_FAILED"
        assert finished["reason"] == "control service restarted while the run was starting"
        _gone(cluster, namespace, timeout_s=30)
