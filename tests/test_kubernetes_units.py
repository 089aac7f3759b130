"""The Kubernetes launcher's pure parts: a run's manifests and the pod-state words. The same objects
and states are exercised against a real API server in tests/test_kubernetes_launcher.py."""

from __future__ import annotations

import subprocess

import pytest

from fedops_common.proc import console_script
from fedops_control.run.kubernetes.manifests import (
    FLEET_PORT,
    LINK_PORT,
    RUN_LABEL,
    ClusterSettings,
    run_manifests,
)
from fedops_control.run.kubernetes.options import check_label_value
from fedops_control.run.kubernetes.podstate import read_pod

SETTINGS = ClusterSettings(image="fedops-control:latest")


def _kinds(objects: list[dict]) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in objects]


def test_a_run_gets_exactly_its_namespace_and_objects() -> None:
    objects = run_manifests(SETTINGS, "run-abc", (b"cert", b"key", b"ca"), b"s" * 32)
    assert _kinds(objects) == [
        ("Namespace", "fedops-run-abc"), ("ResourceQuota", "run-quota"), ("ServiceAccount", "superexec"),
        ("Role", "superexec"), ("RoleBinding", "superexec"), ("Secret", "superexec-auth"),
        ("Secret", "superlink-tls"), ("ConfigMap", "superexec-executor"),
        ("NetworkPolicy", "deny-all-ingress"), ("NetworkPolicy", "fleet-from-anywhere"),
        ("NetworkPolicy", "within-namespace"), ("NetworkPolicy", "control-from-fedops"),
        ("Pod", "superlink"), ("Service", "superlink-fleet"), ("Service", "superlink")]
    assert all(o["metadata"]["labels"][RUN_LABEL] == "run-abc" for o in objects)
    assert all(o["metadata"].get("namespace") == "fedops-run-abc" for o in objects[1:])
    assert objects[0]["metadata"]["labels"]["fedops.io/owner"] == "fedops"  # the control service's namespace


def test_only_the_fleet_port_is_open_to_everyone() -> None:
    policies = {o["metadata"]["name"]: o["spec"] for o in run_manifests(SETTINGS, "run-abc", None, b"x")
                if o["kind"] == "NetworkPolicy"}
    assert policies["deny-all-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    open_rules = [rule for spec in policies.values() for rule in spec.get("ingress", []) if "from" not in rule]
    assert open_rules == [{"ports": [{"protocol": "TCP", "port": FLEET_PORT}]}]
    control = policies["control-from-fedops"]["ingress"][0]
    assert control["ports"] == [{"protocol": "TCP", "port": LINK_PORT}]
    assert control["from"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "fedops"}}


def test_the_pod_runs_the_gateway_superlink_and_flowers_kubernetes_executor() -> None:
    pod = next(o for o in run_manifests(SETTINGS, "run-abc", (b"c", b"k", b"a"), b"x") if o["kind"] == "Pod")
    superlink, superexec = pod["spec"]["containers"]
    assert superlink["command"][:3] == ["python", "-m", "fedops_control.run.fleet_gateway"]
    assert "--enable-supernode-auth" in superlink["command"] and "flower-superlink" in superlink["command"]
    assert superexec["command"][superexec["command"].index("--executor") + 1] == "kubernetes"
    assert "fedops-run-abc" in superexec["command"][superexec["command"].index("--runtime-api-address") + 1]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["restartPolicy"] == "Never"


def test_the_control_service_binds_itself_in_the_run_namespace_when_told_who_it_is() -> None:
    subject = {"kind": "ServiceAccount", "name": "fedops-control", "namespace": "fedops"}
    settings = ClusterSettings(image="x", control_subject=subject)
    binding = run_manifests(settings, "run-abc", None, b"x")[1]
    assert binding["kind"] == "RoleBinding" and binding["subjects"] == [subject]
    assert binding["roleRef"]["kind"] == "ClusterRole" and binding["roleRef"]["name"] == settings.run_role


def test_the_owner_label_is_the_control_namespace_unless_an_owner_is_given() -> None:
    """Two control services in one namespace (two Helm releases) each need their own owner: a
    restart deletes the run namespaces of its owner that no run took, and no others."""
    assert ClusterSettings(image="x").owner_label == "fedops"
    beta = ClusterSettings(image="x", owner="fedops.beta", control_subject={"kind": "User", "name": "u"},
                           run_role="fedops-beta-fedops-control-run-namespace")
    assert beta.owner_label == "fedops.beta"
    objects = run_manifests(beta, "run-abc", None, b"x")
    assert objects[0]["metadata"]["labels"]["fedops.io/owner"] == "fedops.beta"
    assert objects[1]["roleRef"]["name"] == "fedops-beta-fedops-control-run-namespace"


@pytest.mark.parametrize(("value", "problem"), [
    ("fedops", ""), ("fedops.release-a", ""), ("a" * 63, ""),
    ("a" * 64, "longer than 63 characters"), ("fedops.", "not a label value"), ("team/a", "not a label value"),
])
def test_an_owner_must_be_a_label_value(value: str, problem: str) -> None:
    found = check_label_value(value)
    assert (problem in found) if problem else found == ""


@pytest.mark.integration  # starts the real fedops-control, which exits at once
def test_the_control_service_refuses_an_owner_that_is_no_label_value(tmp_path) -> None:
    """Refused at start with the flag named (exit code 2), not by the API server at the first run."""
    result = subprocess.run([console_script("fedops-control"), "--data-dir", str(tmp_path), "--launcher", "kubernetes",
                             "--k8s-image", "x", "--k8s-owner", "team/a"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--k8s-owner" in result.stderr and "not a label value" in result.stderr


def _pod(phase: str = "Pending", conditions: list | None = None, containers: list | None = None,
         **status: str) -> dict:
    return {"metadata": {}, "status": {"phase": phase, "conditions": conditions or [],
                                       "containerStatuses": containers or [], **status}}


def test_pod_states_in_plain_words() -> None:
    unschedulable = read_pod(_pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                               "message": "0/1 nodes are available: 1 Insufficient cpu."}]))
    assert not unschedulable.final and "cannot be scheduled" in unschedulable.words
    assert "Insufficient cpu" in unschedulable.words
    pull = read_pod(_pod(containers=[{"name": "superlink", "image": "x:1",
                                      "state": {"waiting": {"reason": "ImagePullBackOff"}}}]))
    assert not pull.final and "image pull failure" in pull.words
    crash = read_pod(_pod("Running", containers=[{"name": "superlink", "restartCount": 4,
                                                  "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                                  "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]))
    assert crash.final and "crash-looping" in crash.words and "exit code 1" in crash.words
    evicted = read_pod(_pod("Failed", reason="Evicted", message="The node was low on resource: memory."))
    assert evicted.final and "evicted" in evicted.words and "memory" in evicted.words
    ready = read_pod(_pod("Running", conditions=[{"type": "Ready", "status": "True"}]))
    assert ready.ready and not ready.final and ready.words == ""
    assert read_pod(None).final


def test_run_diagnose_of_a_starting_run_says_what_the_launcher_last_said(db_sessions) -> None:
    from fedops_common.proto import common_pb2 as S
    from fedops_control.agents.sessions import AgentSessions
    from fedops_control.run.diagnosis import SUPERLINK_STATUS, diagnose
    from fedops_control.state.models import EventRow, RunRow, TaskRow

    with db_sessions.begin() as db:
        db.add(TaskRow(id="task-1", title="t", app={"local_path": "/nowhere"}, strategy={}))
        db.flush()
        db.add(RunRow(id="run-1", task_id="task-1", state=S.RUN_STATE_STARTING, config_hash="h"))
        db.flush()
        db.add(EventRow(run_id="run-1", kind=SUPERLINK_STATUS, message="the SuperLink pod is pending"))
        db.add(EventRow(run_id="run-1", kind=SUPERLINK_STATUS, message="the SuperLink pod cannot be scheduled: "
                                                                       "0/1 nodes are available: 1 Insufficient cpu."))
    summary = diagnose(db_sessions, AgentSessions(), "run-1").summary
    assert summary == ("Run is starting: launching SuperLink and SuperNodes. SuperLink: the SuperLink pod cannot be "
                       "scheduled: 0/1 nodes are available: 1 Insufficient cpu.")
