"""The Helm charts (deploy/helm): lint, render for several value sets, and every rendered object
admitted by a real API server (server-side dry run); two releases of the control chart in one
cluster (one namespace, or one release name in two) share no cluster-scoped object; the chart's
RBAC is applied for real and is enough for the Kubernetes launcher to run a run namespace, and no
more."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedops_control.run.kubernetes.cluster import Cluster, connect
from fedops_control.run.kubernetes.launcher import KubernetesLauncher
from fedops_control.run.kubernetes.manifests import ClusterSettings
from fedops_control.run.kubernetes.options import control_pod_labels
from fedops_control.run.launcher import ControlRoute
from tests.kube import CONTROL_USER, KubeCluster, helm

pytestmark = pytest.mark.integration  # real helm and API server
CHARTS = Path(__file__).resolve().parents[1] / "deploy" / "helm"
VALUE_SETS = sorted((chart.name, values.name) for chart in CHARTS.iterdir() for values in (chart / "ci").glob("*.yaml"))
RELEASE_NS = "fedops"


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm()), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result


def _render(chart: str, values: str | None, *sets: str, release: str = "fedops",
            namespace: str = RELEASE_NS) -> list[dict[str, Any]]:
    args = ["template", release, str(CHARTS / chart), "--namespace", namespace]
    if values:
        args += ["-f", str(CHARTS / chart / "ci" / values)]
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(_helm(*args).stdout) if doc]


def _control_flags(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The control service's --k8s-* flags in a rendered release (name without dashes: value)."""
    control = next(o for o in objects if o["kind"] == "Deployment"
                   and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "fedops-control")
    args = control["spec"]["template"]["spec"]["containers"][0]["args"]
    return dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--k8s-"))


def test_there_are_value_sets_for_both_charts() -> None:
    assert {chart for chart, _ in VALUE_SETS} == {"fedops-control", "fedops-agent"}
    assert len(VALUE_SETS) >= 5


@pytest.mark.parametrize(("chart", "values"), VALUE_SETS)
def test_helm_lint(chart: str, values: str) -> None:
    result = _helm("lint", "--strict", str(CHARTS / chart), "-f", str(CHARTS / chart / "ci" / values))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(("chart", "missing"), [
    ("fedops-control", "adminToken.existingSecret is required"),
    ("fedops-agent", "control is required"),
])
def test_defaults_refuse_to_render_without_secrets(chart: str, missing: str) -> None:
    """Secure defaults: no admin token or enrolment token is made up; TLS is on."""
    result = _helm("template", "fedops", str(CHARTS / chart), check=False)
    assert result.returncode != 0 and missing in result.stderr
    no_tls_secret = _helm("template", "fedops", str(CHARTS / "fedops-control"), "--set",
                          "adminToken.existingSecret=a", "--set", "dashboard.tokenSecret=d", check=False)
    assert "tls.existingSecret is required while tls.enabled" in no_tls_secret.stderr


def test_the_control_chart_renders_tls_prometheus_and_the_kubernetes_launcher() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _render("fedops-control",
                                                                       "kubernetes-launcher-values.yaml")}
    pod = objects[("Deployment", "fedops-fedops-control")]["spec"]["template"]
    args = pod["spec"]["containers"][0]["args"]
    assert "--tls-cert=/etc/fedops/tls/tls.crt" in args and "--launcher=kubernetes" in args
    assert "--k8s-control-namespace=fedops" in args and "--k8s-service-account=fedops-fedops-control" in args
    # Cluster-scoped names carry the release's namespace and name; so does the owner of its run namespaces.
    assert "--k8s-run-role=fedops-fedops-fedops-control-run-namespace" in args and "--k8s-owner=fedops.fedops" in args
    assert ("ClusterRole", "fedops-fedops-fedops-control-run-namespace") in objects
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    # What run namespaces admit to their Control API: this release's pods only.
    instance = next(a.split("=", 1)[1] for a in args if a.startswith("--k8s-control-instance="))
    assert control_pod_labels(instance).items() <= pod["metadata"]["labels"].items()
    assert instance == "fedops" and control_pod_labels(instance)["app.kubernetes.io/instance"] == "fedops"
    rules = objects[("ClusterRole", "fedops-fedops-fedops-control-namespaces")]["rules"]
    assert {r["resources"][0] for r in rules} == {"namespaces", "rolebindings", "clusterroles"}
    # Run pods' observer relays reach the service by its Service's cluster DNS name, on a port its
    # NetworkPolicy admits from anywhere (run namespaces included); no relay certificate without mTLS.
    assert "--k8s-control-address=fedops-fedops-control.fedops.svc:50051" in args
    assert not any(a.startswith("--k8s-relay-tls") for a in args)
    service = objects[("Service", "fedops-fedops-control")]["spec"]["ports"]
    assert {"name": "grpc", "port": 50051, "targetPort": "grpc"} in service
    ingress = objects[("NetworkPolicy", "fedops-fedops-control")]["spec"]["ingress"]
    assert [rule for rule in ingress if "from" not in rule and {"protocol": "TCP", "port": 50051} in rule["ports"]]


def test_under_mutual_tls_run_relays_get_a_client_certificate_of_their_own() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _render("fedops-control",
                                                                       "postgres-elasticsearch-values.yaml")}
    pod = objects[("Deployment", "fedops-fedops-control")]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--mtls" in args and "--k8s-control-address=fedops-grpc.fedops.svc.cluster.local:50051" in args
    assert "--k8s-relay-tls-cert=/etc/fedops/relay-tls/tls.crt" in args
    assert "--k8s-relay-tls-key=/etc/fedops/relay-tls/tls.key" in args
    assert {"name": "relay-tls", "secret": {"secretName": "fedops-relay-tls"}} in pod["volumes"]
    refused = _helm("template", "fedops", str(CHARTS / "fedops-control"), "-f",
                    str(CHARTS / "fedops-control" / "ci" / "postgres-elasticsearch-values.yaml"),
                    "--set", "launcher.relayTLS.existingSecret=", check=False)
    assert refused.returncode != 0 and "launcher.relayTLS.existingSecret is required" in refused.stderr


@pytest.mark.parametrize(("chart", "values"), VALUE_SETS)
def test_every_rendered_object_is_admitted_by_the_api_server(kube_cluster: KubeCluster, chart: str,
                                                              values: str) -> None:
    cluster = Cluster(connect(kube_cluster.admin_kubeconfig))
    if not cluster.namespace_exists(RELEASE_NS):
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NS}})
    objects = _render(chart, values)
    assert objects
    for obj in objects:
        cluster.create(obj, dry_run=True)  # ApiException (with the server's reason) when not admitted


def test_the_charts_rbac_is_all_the_launcher_needs(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    """Apply the chart's ClusterRoles for real, bind the namespaces one to the test user
    'fedops-control' (instead of the chart's ServiceAccount), and launch a run with that user's
    credentials: it binds itself in the run namespace and creates everything; elsewhere it may
    not even read a Secret."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    admin = Cluster(connect(kube_cluster.admin_kubeconfig))
    rendered = _render("fedops-control", "kubernetes-launcher-values.yaml")
    roles = [obj for obj in rendered if obj["kind"] == "ClusterRole"]
    for obj in roles:
        admin.create(obj)
    run_role = _control_flags(rendered)["k8s-run-role"]
    namespaces_role = next(r["metadata"]["name"] for r in roles if r["metadata"]["name"] != run_role)
    admin.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                  "metadata": {"name": "test-fedops-control-namespaces"},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                              "name": namespaces_role},
                  "subjects": [{"kind": "User", "name": CONTROL_USER, "apiGroup": "rbac.authorization.k8s.io"}]})
    limited = Cluster(connect(kube_cluster.control_kubeconfig))
    subject = {"kind": "User", "name": CONTROL_USER, "apiGroup": "rbac.authorization.k8s.io"}
    launcher = KubernetesLauncher(limited, ClusterSettings(image="fedops-control:test", control_subject=subject,
                                                           run_role=run_role,
                                                           control_address=_control_flags(rendered)[
                                                               "k8s-control-address"]),
                                  advertised_host="127.0.0.1", start_timeout_s=30, poll_s=0.3)

    async def scenario() -> None:
        handle = await launcher.start("run-rbac", tmp_path / "run-rbac", ControlRoute("127.0.0.1:50051"))
        try:
            assert limited.read_pod(handle.where, "superlink") is not None
        finally:
            await launcher.stop(handle)
            await launcher.close()

    asyncio.run(scenario())
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(limited.api).list_namespaced_secret("default")
    assert denied.value.status == 403
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(limited.api).list_namespaced_pod("kube-system")
    assert denied.value.status == 403


def _cluster_scoped(cluster: Cluster, objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in objects
            if not cluster.dynamic.resources.get(api_version=o["apiVersion"], kind=o["kind"]).namespaced]


@pytest.mark.parametrize(("first", "second"), [
    (("alpha", "fedops-shared"), ("beta", "fedops-shared")),     # two releases in one namespace
    (("fedops", "fedops-team-a"), ("fedops", "fedops-team-b")),  # one release name in two namespaces
], ids=["one-namespace", "one-release-name"])
def test_two_control_releases_share_no_cluster_scoped_object(kube_cluster: KubeCluster, first: tuple[str, str],
                                                             second: tuple[str, str]) -> None:
    """The first release is applied for real, the second then admitted by a server-side dry run: a
    ClusterRole or binding of the same name would be refused (409 AlreadyExists) or, applied with
    helm, overwrite the first release's. Their run namespaces get different owners and roles."""
    cluster = Cluster(connect(kube_cluster.admin_kubeconfig))
    releases = [_render("fedops-control", "kubernetes-launcher-values.yaml", release=name, namespace=namespace)
                for name, namespace in (first, second)]
    scoped = [_cluster_scoped(cluster, objects) for objects in releases]
    assert all(len(names) == 3 for names in scoped)  # the namespaces ClusterRole and its binding, the run role
    assert not set(scoped[0]) & set(scoped[1])
    first_flags, second_flags = _control_flags(releases[0]), _control_flags(releases[1])
    assert first_flags["k8s-owner"] != second_flags["k8s-owner"]
    assert first_flags["k8s-run-role"] != second_flags["k8s-run-role"]
    for flag in (first_flags, second_flags):  # the role each binds in its run namespaces is its own release's
        assert ("ClusterRole", flag["k8s-run-role"]) in scoped[0] + scoped[1]
    created: list[dict[str, Any]] = []
    try:
        for _, namespace in (first, second):
            if not cluster.namespace_exists(namespace):
                cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
                created.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for obj in releases[0]:
            cluster.create(obj)
            created.append(obj)
        for obj in releases[1]:
            cluster.create(obj, dry_run=True)  # ApiException (409 for a name the first release took)
    finally:
        for obj in reversed(created):  # cluster-scoped ones by name; the namespaces take the rest with them
            resource = cluster.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            if not resource.namespaced:
                resource.delete(name=obj["metadata"]["name"])
