"""The Kubernetes launcher against a real API server (etcd, kube-apiserver, kube-scheduler,
kube-controller-manager) with kwok playing the node and the kubelet (tests/kube.py).

kwok runs no containers: these tests check the objects a run gets, how the launcher reacts to the
pod states Kubernetes and kwok produce (ready, unschedulable, image pull failure, crash loop,
eviction) and that the namespace goes on finish, hard stop and for orphans after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedops_common.ca import CertificateAuthority
from fedops_control.run.kubernetes.cluster import Cluster, connect
from fedops_control.run.kubernetes.launcher import KubernetesLauncher, LaunchFailed
from fedops_control.run.kubernetes.manifests import RUN_LABEL, ClusterSettings
from fedops_control.run.launcher import ControlRoute
from tests.kube import KUBELET_ANNOTATION, KubeCluster

pytestmark = pytest.mark.integration  # real servers, no FL run
IMAGE = "fedops-control:test"
CONTROL_ADDRESS = "fedops-control.fedops.svc:50051"  # where run pods reach the control service
LOCAL = ControlRoute("127.0.0.1:50051")  # how a local process reaches it (no auth, no TLS: nothing for the relay)


@pytest.fixture
def cluster(kube_cluster: KubeCluster) -> Iterator[Cluster]:
    yield Cluster(connect(kube_cluster.admin_kubeconfig))


def _launcher(cluster: Cluster, events: list[tuple[str, str]], timeout_s: float = 20.0,
              ca: CertificateAuthority | None = None, **settings: Any) -> KubernetesLauncher:
    async def record(run_id: str, words: str) -> None:
        events.append((run_id, words))

    return KubernetesLauncher(cluster, ClusterSettings(image=IMAGE, control_address=CONTROL_ADDRESS, **settings),
                              advertised_host="127.0.0.1",
                              ca=ca, start_timeout_s=timeout_s, poll_s=0.3, on_status=record)


def _gone(cluster: Cluster, namespace: str, timeout_s: float = 60.0) -> None:
    """Wait for the namespace controller to delete the namespace and all in it."""
    deadline = time.monotonic() + timeout_s
    while cluster.namespace_exists(namespace):
        assert time.monotonic() < deadline, f"namespace {namespace} still exists after {timeout_s}s"
        time.sleep(0.5)


def _objects(cluster: Cluster, namespace: str) -> set[tuple[str, str]]:
    """(kind, name) of what this service made in the namespace."""
    from kubernetes import client

    core, rbac, net = client.CoreV1Api(cluster.api), client.RbacAuthorizationV1Api(cluster.api), \
        client.NetworkingV1Api(cluster.api)
    listed = {
        "Pod": core.list_namespaced_pod(namespace), "Service": core.list_namespaced_service(namespace),
        "Secret": core.list_namespaced_secret(namespace), "ConfigMap": core.list_namespaced_config_map(namespace),
        "ResourceQuota": core.list_namespaced_resource_quota(namespace),
        "ServiceAccount": core.list_namespaced_service_account(namespace),
        "Role": rbac.list_namespaced_role(namespace), "RoleBinding": rbac.list_namespaced_role_binding(namespace),
        "NetworkPolicy": net.list_namespaced_network_policy(namespace),
    }
    return {(kind, item.metadata.name) for kind, items in listed.items() for item in items.items
            if (item.metadata.labels or {}).get(RUN_LABEL)}


def test_a_run_gets_its_namespace_and_objects_which_go_when_it_stops(cluster: Cluster, tmp_path: Path) -> None:
    from kubernetes import client

    events: list[tuple[str, str]] = []
    ca = CertificateAuthority.create(tmp_path / "ca", "test SuperLink CA")
    launcher = _launcher(cluster, events, ca=ca)
    (tmp_path / "run.token").write_text("fot_run-k8s1\n")
    (tmp_path / "control-ca.pem").write_text("CONTROL CA")
    control = ControlRoute("127.0.0.1:50051", str(tmp_path / "run.token"), str(tmp_path / "control-ca.pem"))

    async def scenario() -> None:
        handle = await launcher.start("run-k8s1", tmp_path / "run-k8s1", control)
        try:
            assert handle.where == "fedops-run-k8s1"
            assert _objects(cluster, handle.where) == {
                ("ResourceQuota", "run-quota"), ("ServiceAccount", "superexec"), ("Role", "superexec"),
                ("RoleBinding", "superexec"), ("Secret", "superexec-auth"), ("Secret", "superlink-tls"),
                ("Secret", "observer-relay"), ("ConfigMap", "observer-relay-ca"),
                ("ConfigMap", "superexec-executor"), ("NetworkPolicy", "deny-all-ingress"),
                ("NetworkPolicy", "fleet-from-anywhere"), ("NetworkPolicy", "within-namespace"),
                ("NetworkPolicy", "control-from-fedops"), ("Pod", "superlink"), ("Service", "superlink-fleet"),
                ("Service", "superlink")}
            core = client.CoreV1Api(cluster.api)
            relay = core.read_namespaced_secret("observer-relay", handle.where).data
            assert sorted(relay) == ["ca.crt", "token"]  # the run's token and the control service's CA
            assert core.read_namespaced_config_map("observer-relay-ca", handle.where).data == {
                "ca.crt": ca.cert_pem.decode()}  # what ServerApp pods verify the relay with
            ports = {p.name: p.port for p in core.read_namespaced_service("superlink", handle.where).spec.ports}
            assert ports == {"control": 9093, "observer": 9094}
            port = int(handle.address.rsplit(":", 1)[1])
            assert handle.address.startswith("127.0.0.1:") and 30000 <= port <= 32767  # the Fleet NodePort
            assert handle.control_address == "superlink.fedops-run-k8s1.svc:9093"
            assert handle.ca_file is not None and handle.ca_file.read_bytes() == ca.cert_pem
            await asyncio.sleep(1.0)
            assert launcher.is_alive(handle)
            assert ("run-k8s1", "the SuperLink pod is ready in namespace fedops-run-k8s1") in events
        finally:
            await launcher.stop(handle)
            await launcher.close()

    asyncio.run(scenario())
    _gone(cluster, "fedops-run-k8s1")


def test_unschedulable_pod_fails_the_start_within_the_timeout_saying_why(cluster: Cluster, tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    too_big = {"requests": {"cpu": "64", "memory": "1Gi"}, "limits": {"cpu": "64", "memory": "1Gi"}}
    launcher = _launcher(cluster, events, timeout_s=6.0, superlink_resources=too_big,
                         quota={"pods": "10", "requests.cpu": "100", "limits.cpu": "100"})
    started = time.monotonic()
    with pytest.raises(LaunchFailed) as failed:
        asyncio.run(launcher.start("run-k8s2", tmp_path / "run-k8s2", LOCAL))
    assert time.monotonic() - started < 30
    assert "not ready within 6s" in str(failed.value) and "cannot be scheduled" in str(failed.value)
    assert "Insufficient cpu" in str(failed.value)
    assert any("Insufficient cpu" in words for _, words in events)  # said while waiting, as a run event
    _gone(cluster, "fedops-run-k8s2")


def test_abandoning_a_start_while_the_pod_is_pending_ends_it_within_seconds(cluster: Cluster,
                                                                            tmp_path: Path) -> None:
    """A hard stop while the pod cannot be scheduled: the start gives up at once (not after its 120 s
    timeout) and the namespace, pod and all, is deleted within seconds."""
    events: list[tuple[str, str]] = []
    too_big = {"requests": {"cpu": "64", "memory": "1Gi"}, "limits": {"cpu": "64", "memory": "1Gi"}}
    launcher = _launcher(cluster, events, timeout_s=120.0, superlink_resources=too_big,
                         quota={"pods": "10", "requests.cpu": "100", "limits.cpu": "100"})

    async def scenario() -> float:
        start = asyncio.create_task(launcher.start("run-abandon", tmp_path / "abandon", LOCAL))
        for _ in range(100):
            if any("cannot be scheduled" in words for _, words in events):
                break
            await asyncio.sleep(0.2)
        assert any("cannot be scheduled" in words for _, words in events), events  # held Pending
        stopped = time.monotonic()
        launcher.abandon("run-abandon")
        with pytest.raises(LaunchFailed, match="stopped while its SuperLink pod was starting"):
            await start
        await launcher.close()
        return stopped

    stopped = asyncio.run(scenario())
    assert time.monotonic() - stopped < 5
    _gone(cluster, "fedops-run-abandon", timeout_s=15)
    assert time.monotonic() - stopped < 20  # not the start timeout (120 s)
    launcher.abandon("run-abandon")  # no start waiting: nothing happens


@pytest.mark.parametrize(("kubelet", "words", "at_once"), [
    ("crash", "container superlink is crash-looping (restarted 5 times; last exit code 1: Error)", True),
    ("nopull", "image pull failure for container superlink", False),
])
def test_a_pod_that_cannot_run_fails_the_start(cluster: Cluster, tmp_path: Path, kubelet: str, words: str,
                                               at_once: bool) -> None:
    events: list[tuple[str, str]] = []
    launcher = _launcher(cluster, events, timeout_s=8.0, pod_annotations={KUBELET_ANNOTATION: kubelet})
    started = time.monotonic()
    with pytest.raises(LaunchFailed) as failed:
        asyncio.run(launcher.start(f"run-{kubelet}", tmp_path / kubelet, LOCAL))
    elapsed = time.monotonic() - started
    assert words in str(failed.value)
    assert (elapsed < 8.0) if at_once else ("not ready within 8s" in str(failed.value))
    _gone(cluster, f"fedops-run-{kubelet}")


def test_eviction_while_running_ends_the_pod_and_says_why(cluster: Cluster, kube_cluster: KubeCluster,
                                                          tmp_path: Path) -> None:
    """The node evicts the running SuperLink pod (its status written as the kubelet writes it):
    is_alive turns False and why_down says what happened (the watchdog fails the run with it)."""
    events: list[tuple[str, str]] = []
    launcher = _launcher(cluster, events)
    core = kube_cluster.core()

    async def scenario() -> None:
        handle = await launcher.start("run-evict", tmp_path / "evict", LOCAL)
        try:
            core.patch_namespaced_pod_status("superlink", handle.where, {"status": {
                "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}})
            for _ in range(50):
                if not launcher.is_alive(handle):
                    break
                await asyncio.sleep(0.2)
            assert not launcher.is_alive(handle)
            assert launcher.why_down(handle) == ("the SuperLink pod was evicted by its node: "
                                                 "The node was low on resource: memory.")
        finally:
            await launcher.stop(handle)
            await launcher.close()

    asyncio.run(scenario())
    _gone(cluster, "fedops-run-evict")


def test_after_a_restart_running_runs_are_adopted_and_orphans_deleted(cluster: Cluster, tmp_path: Path) -> None:
    """A new launcher (the restarted control service) adopts the run that is still active and, on
    open(), deletes the namespace of the run nobody adopted."""
    events: list[tuple[str, str]] = []

    async def before() -> None:
        launcher = _launcher(cluster, events)
        await launcher.start("run-kept", tmp_path / "kept", LOCAL)
        await launcher.start("run-orphan", tmp_path / "orphan", LOCAL)
        await launcher.close()  # the service exits; namespaces stay
        other = _launcher(cluster, events, control_namespace="other-fedops")  # another FedOps in the cluster
        await other.start("run-other", tmp_path / "other", LOCAL)
        await other.close()

    asyncio.run(before())
    assert cluster.namespace_exists("fedops-run-kept") and cluster.namespace_exists("fedops-run-orphan")

    async def after() -> None:
        launcher = _launcher(cluster, events)
        handle = launcher.adopt("run-kept", tmp_path / "kept", "127.0.0.1:30000")
        assert handle is not None and handle.where == "fedops-run-kept"
        assert launcher.adopt("run-unknown", tmp_path / "unknown", "127.0.0.1:30001") is None
        await launcher.open()
        try:
            await asyncio.sleep(1.0)
            assert launcher.is_alive(handle)
        finally:
            await launcher.stop(handle)  # the run finishes: hard stop or completion alike
            await launcher.close()

    asyncio.run(after())
    _gone(cluster, "fedops-run-orphan")
    _gone(cluster, "fedops-run-kept")
    assert cluster.namespace_exists("fedops-run-other")  # not this service's to delete
    cluster.delete_namespace("fedops-run-other")
