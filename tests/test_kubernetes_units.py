"""The Kubernetes launcher's pure parts: a run's manifests and the pod-state words. The same objects
and states are exercised against a real API server in tests/test_kubernetes_launcher.py."""

from __future__ import annotations

import subprocess

import pytest

from fedops_common.proc import console_script
from fedops_control.run.kubernetes.manifests import (
    FLEET_PORT,
    LINK_PORT,
    RELAY_CA_DIR,
    RELAY_PORT,
    RUN_LABEL,
    ClusterSettings,
    RelayCredentials,
    run_manifests,
)
from fedops_control.run.kubernetes.options import check_label_value, control_pod_labels
from fedops_control.run.kubernetes.podstate import read_pod

CONTROL = "fedops-control.fedops.svc:50051"  # the control Service's cluster DNS name (the Helm chart's)
SETTINGS = ClusterSettings(image="fedops-control:latest", control_address=CONTROL)


def _kinds(objects: list[dict]) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in objects]


def test_a_run_gets_exactly_its_namespace_and_objects() -> None:
    objects = run_manifests(SETTINGS, "run-abc", (b"cert", b"key", b"ca"), b"s" * 32)
    assert _kinds(objects) == [
        ("Namespace", "fedops-run-abc"), ("ResourceQuota", "run-quota"), ("ServiceAccount", "superexec"),
        ("Role", "superexec"), ("RoleBinding", "superexec"), ("Secret", "superexec-auth"),
        ("Secret", "superlink-tls"), ("Secret", "observer-relay"), ("ConfigMap", "observer-relay-ca"),
        ("ConfigMap", "superexec-executor"),
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


def test_only_the_releases_own_control_pods_reach_the_control_port() -> None:
    """Two releases in one namespace: each run namespace admits to port 9093 the pods of its own
    release (instance label), not every fedops-control pod there."""
    import dataclasses

    settings = dataclasses.replace(SETTINGS, control_pod_labels=control_pod_labels("alpha"))
    policy = next(o["spec"] for o in run_manifests(settings, "run-abc", None, b"x")
                  if o["metadata"]["name"] == "control-from-fedops")
    [source] = policy["ingress"][0]["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "fedops-control",
                                                    "app.kubernetes.io/instance": "alpha"}
    assert control_pod_labels("") == {"app.kubernetes.io/name": "fedops-control"}


def test_the_pod_runs_the_gateway_superlink_and_flowers_kubernetes_executor() -> None:
    pod = next(o for o in run_manifests(SETTINGS, "run-abc", (b"c", b"k", b"a"), b"x") if o["kind"] == "Pod")
    superlink, superexec, _ = pod["spec"]["containers"]
    assert superlink["command"][:3] == ["python", "-m", "fedops_control.run.fleet_gateway"]
    assert "--enable-supernode-auth" in superlink["command"] and "flower-superlink" in superlink["command"]
    assert superexec["command"][superexec["command"].index("--executor") + 1] == "kubernetes"
    assert "fedops-run-abc" in superexec["command"][superexec["command"].index("--runtime-api-address") + 1]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["restartPolicy"] == "Never"


def _pod_of(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "Pod")


def test_the_relay_port_is_on_the_superlink_service_and_open_within_the_namespace_only() -> None:
    objects = run_manifests(SETTINGS, "run-abc", (b"c", b"k", b"a"), b"x")
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "superlink")
    assert {"name": "observer", "port": RELAY_PORT, "targetPort": RELAY_PORT} in service["spec"]["ports"]
    relay = next(c for c in _pod_of(objects)["spec"]["containers"] if c["name"] == "observer-relay")
    assert relay["ports"] == [{"name": "observer", "containerPort": RELAY_PORT}]
    assert relay["readinessProbe"]["tcpSocket"]["port"] == RELAY_PORT  # the pod is ready once it listens
    # Unchanged policies: deny all, then the Fleet port from anywhere, the Control port from the control
    # service's pods; the relay's port is admitted by the within-namespace rule alone.
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]
    admitting = [rule for spec in policies for rule in spec.get("ingress", [])
                 if not rule.get("ports") or any(p["port"] == RELAY_PORT for p in rule["ports"])]
    assert admitting == [{"from": [{"podSelector": {}}]}]  # pods of this namespace, without a namespaceSelector


def test_the_relay_forwards_to_the_control_service_with_the_runs_credentials_in_its_container_only() -> None:
    relay = RelayCredentials(token="fot_run", ca=b"CONTROL CA", cert=b"RELAY CERT", key=b"RELAY KEY")
    objects = run_manifests(SETTINGS, "run-abc", (b"c", b"k", b"SUPERLINK CA"), b"x", relay=relay)
    secret = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "observer-relay")
    assert sorted(secret["data"]) == ["ca.crt", "tls.crt", "tls.key", "token"]
    pod = _pod_of(objects)
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    command = containers["observer-relay"]["command"]
    assert command[:3] == ["python", "-m", "fedops_control.run.observer_relay"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags == {"--listen": f"0.0.0.0:{RELAY_PORT}", "--upstream": CONTROL,
                     "--tls-cert": "/etc/fedops/tls/tls.crt", "--tls-key": "/etc/fedops/tls/tls.key",
                     "--upstream-ca": "/etc/fedops/relay/ca.crt", "--upstream-cert": "/etc/fedops/relay/tls.crt",
                     "--upstream-key": "/etc/fedops/relay/tls.key", "--token-file": "/etc/fedops/relay/token"}
    volume = next(v["name"] for v in pod["spec"]["volumes"]
                  if v.get("secret", {}).get("secretName") == "observer-relay")
    holders = [name for name, c in containers.items() if any(m["name"] == volume for m in c["volumeMounts"])]
    assert holders == ["observer-relay"]
    assert containers["observer-relay"]["resources"] == SETTINGS.relay_resources  # counted in the quota
    # The CA ServerApp pods verify the relay with is the SuperLink's (public), in a ConfigMap.
    ca = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "observer-relay-ca")
    assert ca["data"] == {"ca.crt": "SUPERLINK CA"}
    # No auth, no TLS anywhere (isolated experiments): plaintext both ways, no files to present.
    plain = run_manifests(SETTINGS, "run-abc", None, b"x")
    command = next(c for c in _pod_of(plain)["spec"]["containers"] if c["name"] == "observer-relay")["command"]
    assert command[3:] == ["--listen", f"0.0.0.0:{RELAY_PORT}", "--upstream", CONTROL]
    assert not any(o["kind"] == "ConfigMap" and o["metadata"]["name"] == "observer-relay-ca" for o in plain)
    with pytest.raises(ValueError, match="control_address is required"):
        run_manifests(ClusterSettings(image="x"), "run-abc", None, b"x")


def test_flowers_executor_builds_serverapp_pods_with_the_relay_ca_and_no_secret_of_ours(tmp_path) -> None:
    """The executor config goes through flwr 1.42's own loader and pod builder (which refuse Secret
    volumes and valueFrom): the ServerApp pod gets the relay's CA from its ConfigMap, and the only
    Secret in it is Flower's own AppIO credential."""
    from flwr.supercore.constant import ExecutorType, TaskType
    from flwr.supercore.superexec.executor.config import load_executor_config
    from flwr.supercore.superexec.executor.factory import _kubernetes_executor_config_from_mapping
    from flwr.supercore.superexec.executor.kubernetes_executor import _build_taskexecutor_pod
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    objects = run_manifests(SETTINGS, "run-abc", (b"c", b"k", b"SUPERLINK CA"), b"x")
    text = next(o for o in objects if o["metadata"]["name"] == "superexec-executor")["data"]["executor.yaml"]
    (tmp_path / "ca.crt").write_text("SUPERLINK CA")
    (tmp_path / "executor.yaml").write_text(text.replace("/etc/fedops/tls/ca.crt", str(tmp_path / "ca.crt")))
    config = _kubernetes_executor_config_from_mapping(load_executor_config(str(tmp_path / "executor.yaml"),
                                                                           ExecutorType.KUBERNETES))
    spec = ExecutionSpec(task_type=TaskType.SERVER_APP, runtime_api_address="superlink.fedops-run-abc.svc:9093",
                         token="t", insecure=False, root_certificates_path=None, runtime_dependency_install=False,
                         parent_pid=None, suppress_output=False, task_id=7)
    pod = _build_taskexecutor_pod(spec, config, config.runtime_root_certificates, "a1")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["relay-ca"] == {"name": "relay-ca", "configMap": {"name": "observer-relay-ca"}}
    assert [name for name, v in volumes.items() if "secret" in v or "projected" in v] == ["appio-credentials"]
    (container,) = pod["spec"]["containers"]
    assert {"name": "relay-ca", "mountPath": RELAY_CA_DIR, "readOnly": True} in container["volumeMounts"]
    assert all("valueFrom" not in entry for entry in container.get("env", []))
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_serverapp_pods_are_told_the_relay_and_hold_no_credential(tmp_path) -> None:
    """The run config of a ServerApp: on Kubernetes the relay's address (the Service's short name)
    and the CA file from the ConfigMap, no token and no client certificate; locally, unchanged."""
    from fedops_common import runconfig as keys
    from fedops_common.ca import CertificateAuthority
    from fedops_control.run.kubernetes.launcher import KubernetesLauncher
    from fedops_control.run.launcher import ControlRoute, LocalProcessLauncher

    local = ControlRoute("127.0.0.1:50051", "/data/runs/run-abc/run.token", "/certs/ca.pem", "/certs/control.pem",
                         "/certs/control.key")
    assert LocalProcessLauncher().app_route(local) == local
    ca = CertificateAuthority.create(tmp_path / "ca", "test SuperLink CA")
    route = KubernetesLauncher(None, SETTINGS, "fl.example.org", ca=ca).app_route(local)  # type: ignore[arg-type]
    assert route.run_config() == {keys.CONTROL_ADDRESS: f"superlink:{RELAY_PORT}", keys.CREDENTIAL_FILE: "",
                                  keys.TLS_CA_FILE: f"{RELAY_CA_DIR}/ca.crt", keys.TLS_CERT_FILE: "",
                                  keys.TLS_KEY_FILE: ""}
    plaintext = KubernetesLauncher(None, SETTINGS, "fl.example.org").app_route(local)  # type: ignore[arg-type]
    assert plaintext == ControlRoute(f"superlink:{RELAY_PORT}")
    # The relay serves the SuperLink's certificate, which names the Service's short name too.
    from cryptography import x509

    launcher = KubernetesLauncher(None, SETTINGS, "fl.example.org", ca=ca)  # type: ignore[arg-type]
    tls, _ = launcher._tls("fedops-run-abc", tmp_path / "run")
    assert tls is not None
    names = x509.load_pem_x509_certificate(tls[0]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {"superlink", "superlink.fedops-run-abc.svc"} <= set(names)


def test_the_relay_presents_its_own_client_certificate_never_the_control_services(tmp_path) -> None:
    from fedops_control.run.kubernetes.launcher import KubernetesLauncher, LaunchFailed
    from fedops_control.run.launcher import ControlRoute

    for name, data in {"run.token": "fot_run\n", "ca.pem": "CONTROL CA", "control.pem": "CONTROL CERT",
                       "control.key": "CONTROL KEY", "relay.pem": "RELAY CERT", "relay.key": "RELAY KEY"}.items():
        (tmp_path / name).write_text(data)
    local = ControlRoute("127.0.0.1:50051", str(tmp_path / "run.token"), str(tmp_path / "ca.pem"),
                         str(tmp_path / "control.pem"), str(tmp_path / "control.key"))
    launcher = KubernetesLauncher(None, SETTINGS, "h", relay_cert=tmp_path / "relay.pem",  # type: ignore[arg-type]
                                  relay_key=tmp_path / "relay.key")
    assert launcher._relay_credentials(local) == RelayCredentials("fot_run", b"CONTROL CA", b"RELAY CERT",
                                                                  b"RELAY KEY")
    without = KubernetesLauncher(None, SETTINGS, "h")  # type: ignore[arg-type]
    with pytest.raises(LaunchFailed, match="--k8s-relay-tls-cert"):
        without._relay_credentials(local)  # mutual TLS, and the relay has no certificate of its own
    no_mtls = ControlRoute(local.address, local.credential_file, local.ca_file)
    assert without._relay_credentials(no_mtls) == RelayCredentials("fot_run", b"CONTROL CA")


def test_the_control_service_binds_itself_in_the_run_namespace_when_told_who_it_is() -> None:
    subject = {"kind": "ServiceAccount", "name": "fedops-control", "namespace": "fedops"}
    settings = ClusterSettings(image="x", control_address=CONTROL, control_subject=subject)
    binding = run_manifests(settings, "run-abc", None, b"x")[1]
    assert binding["kind"] == "RoleBinding" and binding["subjects"] == [subject]
    assert binding["roleRef"]["kind"] == "ClusterRole" and binding["roleRef"]["name"] == settings.run_role


def test_the_owner_label_is_the_control_namespace_unless_an_owner_is_given() -> None:
    """Two control services in one namespace (two Helm releases) each need their own owner: a
    restart deletes the run namespaces of its owner that no run took, and no others."""
    assert ClusterSettings(image="x").owner_label == "fedops"
    beta = ClusterSettings(image="x", control_address=CONTROL, owner="fedops.beta",
                           control_subject={"kind": "User", "name": "u"},
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


@pytest.mark.integration  # starts the real fedops-control, which exits at once
def test_the_control_service_refuses_to_launch_on_kubernetes_where_serverapps_could_not_report(tmp_path) -> None:
    """Without the address run pods reach it at, or under mutual TLS without a client certificate
    for the relays, it refuses to start (exit code 2, the flag named)."""
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    base = [console_script("fedops-control"), "--data-dir", str(tmp_path / "data"), "--launcher", "kubernetes",
            "--k8s-image", "x"]
    no_address = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert no_address.returncode == 2 and "--k8s-control-address" in no_address.stderr
    mtls = [*base, "--k8s-control-address", CONTROL, "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key",
            str(tmp_path / "key.pem"), "--tls-ca", str(tmp_path / "ca.pem"), "--mtls"]
    no_relay_cert = subprocess.run(mtls, capture_output=True, text=True, timeout=60)
    assert no_relay_cert.returncode == 2 and "--k8s-relay-tls-cert" in no_relay_cert.stderr


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
