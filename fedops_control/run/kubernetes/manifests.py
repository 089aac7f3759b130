"""The Kubernetes objects of one run, as plain manifests (dicts): pure, so unit tests read them and
the launcher creates exactly these.

A run gets its own namespace holding:

- the SuperLink pod: one container runs the Fleet gateway (:mod:`fedops_control.run.fleet_gateway`)
  with ``flower-superlink`` as its child, one ``flower-superexec`` with Flower's own Kubernetes
  executor, which starts each ServerApp as a pod in the same namespace, and one the observer relay
  (:mod:`fedops_control.run.observer_relay`), through which those ServerApp pods report to the
  control service: it holds the run's token (and, under mutual TLS, a client certificate), which
  Flower's executor cannot put into a ServerApp pod;
- two Services: ``superlink-fleet`` (the Fleet gateway, the run's only door for agents) and
  ``superlink`` (Flower's one port for its Control and Runtime APIs, for the control service and
  the run's ServerApp pods; and the relay's port, for those pods);
- Secrets: the SuperLink's TLS certificate and key with its CA, the SuperExec shared secret, and
  the relay's credentials for the control service (mounted into the relay's container only);
- ConfigMaps: the Kubernetes executor's config, and the CA that verifies the relay (the
  SuperLink's, public), which the executor mounts into each ServerApp pod;
- a ResourceQuota, and NetworkPolicies: deny all ingress, then allow the Fleet port from anywhere,
  everything within the namespace (ServerApps to the SuperLink and the relay), and the Control
  port from the control service's pods only; the relay's port is open within the namespace alone;
- a ServiceAccount with a Role/RoleBinding allowing what Flower's Kubernetes executor does (pods,
  pods/exec, secrets in this namespace) and nothing else.

Flower serves its Fleet, Control and Runtime APIs on one port, so NetworkPolicies alone cannot
keep outsiders off the Control API; the Fleet gateway forwards the Fleet API only.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "fedops-control"
RUN_LABEL = "fedops.io/run-id"
OWNER_LABEL = "fedops.io/owner"  # on run namespaces: which control service they belong to (ClusterSettings.owner)
COMPONENT = "app.kubernetes.io/component"
POD_NAME = "superlink"
SERVICE_ACCOUNT = "superexec"
FLEET_SERVICE = "superlink-fleet"
LINK_SERVICE = "superlink"
TLS_SECRET = "superlink-tls"
SUPEREXEC_SECRET = "superexec-auth"
EXECUTOR_CONFIG = "superexec-executor"
RELAY_SECRET = "observer-relay"        # the relay's token, control-service CA and client certificate
RELAY_CA_CONFIG = "observer-relay-ca"  # the CA ServerApp pods verify the relay with (public)
RELAY_CONTAINER = "observer-relay"
FLEET_PORT = 9092   # the Fleet gateway: agents
LINK_PORT = 9093    # flower-superlink's one port: Control API (control service), Runtime API (ServerApps)
RELAY_PORT = 9094   # the observer relay: the run's ServerApps reach the control service through it
TLS_DIR = "/etc/fedops/tls"
SECRET_DIR = "/etc/fedops/superexec"
EXECUTOR_DIR = "/etc/fedops/executor"
RELAY_DIR = "/etc/fedops/relay"        # in the relay's container: its Secret
RELAY_CA_DIR = "/etc/fedops/relay-ca"  # in ServerApp pods: the relay's CA (ConfigMap)
DATA_DIR = "/var/lib/flwr"


@dataclass(frozen=True)
class ClusterSettings:
    """What the operator chose for every run namespace (control-service flags, Helm values)."""

    image: str                                  # carries fedops_control and flwr (the fedops-control image)
    # host:port the run's observer relay reaches the control service at, from a pod (the control
    # Service's cluster DNS name; its TLS certificate must name that host). Required.
    control_address: str = ""
    namespace_prefix: str = "fedops-"
    image_pull_policy: str = "IfNotPresent"
    fleet_service_type: str = "NodePort"        # NodePort | LoadBalancer | ClusterIP (agents in the cluster)
    control_namespace: str = "fedops"           # where the control service's pods run (allowed to the Control API)
    control_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "fedops-control"})
    superlink_resources: dict[str, Any] = field(default_factory=lambda: {
        "requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}})
    serverapp_resources: dict[str, Any] = field(default_factory=lambda: {
        "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}})
    relay_resources: dict[str, Any] = field(default_factory=lambda: {
        "requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
    # RBAC: this service holds a ClusterRole for namespaces only (and to bind ``run_role``); in each
    # run namespace it first binds itself (``control_subject``, an RBAC subject) to ``run_role``,
    # the ClusterRole listing what it needs in a run namespace. None: its identity may do all that
    # already (a cluster admin's kubeconfig), no binding is made.
    control_subject: dict[str, str] | None = None
    pod_annotations: dict[str, str] = field(default_factory=dict)  # on the SuperLink pod (e.g. a mesh's opt-out)
    run_role: str = "fedops-run-namespace"     # the Helm chart names it from the release (two releases, one cluster)
    # The fedops.io/owner label of this service's run namespaces; '' = ``control_namespace``. A restart
    # deletes only namespaces with its own owner: two control services in one namespace need two.
    owner: str = ""
    quota: dict[str, str] = field(default_factory=lambda: {
        "pods": "10", "requests.cpu": "8", "requests.memory": "16Gi", "limits.cpu": "16", "limits.memory": "32Gi",
        "services": "4", "services.loadbalancers": "1", "secrets": "20"})

    @property
    def owner_label(self) -> str:
        """The value of :data:`OWNER_LABEL` on this service's run namespaces."""
        return self.owner or self.control_namespace

    def namespace(self, run_id: str) -> str:
        """The run's namespace: a DNS label, as run ids are (``run-<hex>``)."""
        return f"{self.namespace_prefix}{run_id}"[:63]


@dataclass(frozen=True)
class RelayCredentials:
    """What the run's observer relay presents to the control service ('' / b'' = not used)."""

    token: str = ""    # the run's token (the control service runs with auth)
    ca: bytes = b""    # PEM of the CA that issued the control service's certificate (it serves TLS)
    cert: bytes = b""  # the relay's client certificate and key (the control service requires mutual TLS)
    key: bytes = b""

    def secret_data(self) -> dict[str, bytes]:
        """The relay Secret's files."""
        files = {"token": self.token.encode(), "ca.crt": self.ca, "tls.crt": self.cert, "tls.key": self.key}
        return {name: data for name, data in files.items() if data}


def _meta(name: str, namespace: str, run_id: str, component: str = "") -> Manifest:
    labels = {MANAGED_BY: MANAGER, RUN_LABEL: run_id}
    if component:
        labels[COMPONENT] = component
    meta: Manifest = {"name": name, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def link_host(namespace: str) -> str:
    """The in-cluster DNS name of the run's Control/Runtime Service (also in its TLS certificate)."""
    return f"{LINK_SERVICE}.{namespace}.svc"


def relay_address() -> str:
    """Where the run's ServerApp pods reach the observer relay: the ``superlink`` Service's short
    name (they run in the same namespace; the SuperLink's certificate names it too)."""
    return f"{LINK_SERVICE}:{RELAY_PORT}"


def run_manifests(settings: ClusterSettings, run_id: str, tls: tuple[bytes, bytes, bytes] | None,
                  superexec_secret: bytes, namespace: str = "",
                  relay: RelayCredentials = RelayCredentials()) -> list[Manifest]:
    """Every object of the run, namespace first (creation order). ``tls``: (certificate, key, CA)
    PEMs of the SuperLink, or None for a plaintext SuperLink (isolated experiments);
    ``namespace``: default :meth:`ClusterSettings.namespace`; ``relay``: what the observer relay
    presents to the control service at ``settings.control_address``."""
    if not settings.control_address:
        raise ValueError("ClusterSettings.control_address is required: where run pods reach the control service")
    ns = namespace or settings.namespace(run_id)
    pod_labels = {MANAGED_BY: MANAGER, RUN_LABEL: run_id, COMPONENT: POD_NAME}
    namespace_meta = _meta(ns, "", run_id)
    namespace_meta["labels"][OWNER_LABEL] = settings.owner_label
    objects: list[Manifest] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": namespace_meta}]
    if settings.control_subject is not None:
        objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": _meta("fedops-control", ns, run_id),
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                    "name": settings.run_role},
                        "subjects": [dict(settings.control_subject)]})
    objects += [
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": _meta("run-quota", ns, run_id),
         "spec": {"hard": dict(settings.quota)}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(SERVICE_ACCOUNT, ns, run_id)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta("superexec", ns, run_id),
         # What flwr's KubernetesExecutor calls (create/list/patch/delete pods and secrets, pods/exec
         # for warm executors), in this namespace only.
         "rules": [{"apiGroups": [""], "resources": ["pods"],
                    "verbs": ["get", "list", "watch", "create", "delete", "patch"]},
                   {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
                   {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta("superexec", ns, run_id),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "superexec"},
         "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": ns}]},
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(SUPEREXEC_SECRET, ns, run_id), "type": "Opaque",
         "data": {"secret": _b64(superexec_secret)}},
    ]
    if tls is not None:
        cert, key, ca = tls
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": _meta(TLS_SECRET, ns, run_id),
                        "type": "kubernetes.io/tls",
                        "data": {"tls.crt": _b64(cert), "tls.key": _b64(key), "ca.crt": _b64(ca)}})
    objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": _meta(RELAY_SECRET, ns, run_id),
                    "type": "Opaque", "data": {k: _b64(v) for k, v in relay.secret_data().items()}})
    if tls is not None:  # public: the CA ServerApp pods verify the relay (the SuperLink's certificate) with
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(RELAY_CA_CONFIG, ns, run_id),
                        "data": {"ca.crt": tls[2].decode()}})
    objects.append(_executor_config(settings, ns, run_id, tls is not None))
    objects.extend(_network_policies(settings, ns, run_id))
    objects.append(_pod(settings, ns, run_id, pod_labels, tls is not None, relay))
    objects.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta(FLEET_SERVICE, ns, run_id),
                    "spec": {"type": settings.fleet_service_type, "selector": pod_labels,
                             "ports": [{"name": "fleet", "port": FLEET_PORT, "targetPort": FLEET_PORT}]}})
    objects.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta(LINK_SERVICE, ns, run_id),
                    "spec": {"type": "ClusterIP", "selector": pod_labels,
                             "ports": [{"name": "control", "port": LINK_PORT, "targetPort": LINK_PORT},
                                       {"name": "observer", "port": RELAY_PORT, "targetPort": RELAY_PORT}]}})
    return objects


def _executor_config(settings: ClusterSettings, ns: str, run_id: str, tls: bool) -> Manifest:
    """flwr's Kubernetes executor config (``flower-superexec --executor-config``): ServerApp pods in
    this namespace, from the same image, inside the quota, without API credentials or any Secret
    of ours; with TLS, the relay's CA from its ConfigMap (a volume kind the executor allows)."""
    lines = [f"namespace: {ns}", f"image: {settings.image}", f"image-pull-policy: {settings.image_pull_policy}",
             f"labels: {{{MANAGED_BY}: {MANAGER}, {RUN_LABEL}: {run_id}}}",
             "resources: " + _flow(settings.serverapp_resources)]
    if tls:
        lines.append(f"appio-root-certificates-path: {TLS_DIR}/ca.crt")
        # JSON is YAML's flow style: the volume and its mount as the executor copies them into the pod.
        lines.append("volumes: " + json.dumps([{"name": "relay-ca", "configMap": {"name": RELAY_CA_CONFIG}}]))
        lines.append("volume-mounts: " + json.dumps([{"name": "relay-ca", "mountPath": RELAY_CA_DIR,
                                                      "readOnly": True}]))
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(EXECUTOR_CONFIG, ns, run_id),
            "data": {"executor.yaml": "\n".join(lines) + "\n"}}


def _flow(value: Any) -> str:
    """A YAML flow-style rendering of nested dicts of strings (enough for resource specs)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return f'"{value}"'


def _network_policies(settings: ClusterSettings, ns: str, run_id: str) -> list[Manifest]:
    link = {"matchLabels": {COMPONENT: POD_NAME}}
    api = "networking.k8s.io/v1"
    return [
        {"apiVersion": api, "kind": "NetworkPolicy", "metadata": _meta("deny-all-ingress", ns, run_id),
         "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
        {"apiVersion": api, "kind": "NetworkPolicy", "metadata": _meta("fleet-from-anywhere", ns, run_id),
         "spec": {"podSelector": link, "policyTypes": ["Ingress"],
                  "ingress": [{"ports": [{"protocol": "TCP", "port": FLEET_PORT}]}]}},
        {"apiVersion": api, "kind": "NetworkPolicy", "metadata": _meta("within-namespace", ns, run_id),
         "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {}}]}]}},
        {"apiVersion": api, "kind": "NetworkPolicy", "metadata": _meta("control-from-fedops", ns, run_id),
         "spec": {"podSelector": link, "policyTypes": ["Ingress"], "ingress": [{
             "from": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": settings.control_namespace}},
                       "podSelector": {"matchLabels": dict(settings.control_pod_labels)}}],
             "ports": [{"protocol": "TCP", "port": LINK_PORT}]}]}},
    ]


def _pod(settings: ClusterSettings, ns: str, run_id: str, labels: dict[str, str], tls: bool,
         relay: RelayCredentials) -> Manifest:
    tls_link = ["--ssl-certfile", f"{TLS_DIR}/tls.crt", "--ssl-keyfile", f"{TLS_DIR}/tls.key"]
    superlink = ["flower-superlink", *(tls_link + ["--ssl-ca-certfile", f"{TLS_DIR}/ca.crt",
                                                   "--enable-supernode-auth"] if tls else ["--insecure"]),
                 "--host", "0.0.0.0", "--port", str(LINK_PORT), "--database", f"{DATA_DIR}/state.db",
                 "--isolation", "process", "--disable-runtime-dependency-installation",
                 "--superexec-auth-secret-file", f"{SECRET_DIR}/secret"]
    gateway = ["python", "-m", "fedops_control.run.fleet_gateway", "--host", "0.0.0.0", "--port", str(FLEET_PORT),
               "--upstream-port", str(LINK_PORT), *(tls_link + ["--ca-file", f"{TLS_DIR}/ca.crt"] if tls else []),
               "--", *superlink]
    superexec = ["flower-superexec", "--runtime-api-address", f"{link_host(ns)}:{LINK_PORT}",
                 *(["--root-certificates", f"{TLS_DIR}/ca.crt"] if tls else ["--insecure"]),
                 "--executor", "kubernetes", "--executor-config", f"{EXECUTOR_DIR}/executor.yaml",
                 "--superexec-auth-secret-file", f"{SECRET_DIR}/secret"]
    relay_files = relay.secret_data()
    observer_relay = ["python", "-m", "fedops_control.run.observer_relay", "--listen", f"0.0.0.0:{RELAY_PORT}",
                      "--upstream", settings.control_address,
                      *(["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"] if tls else []),
                      *(["--upstream-ca", f"{RELAY_DIR}/ca.crt"] if "ca.crt" in relay_files else []),
                      *(["--upstream-cert", f"{RELAY_DIR}/tls.crt", "--upstream-key", f"{RELAY_DIR}/tls.key"]
                        if "tls.crt" in relay_files else []),
                      *(["--token-file", f"{RELAY_DIR}/token"] if "token" in relay_files else [])]
    secure = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
              "capabilities": {"drop": ["ALL"]}}
    mounts = [{"name": "superexec-auth", "mountPath": SECRET_DIR, "readOnly": True}]
    if tls:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    volumes: list[Manifest] = [{"name": "superexec-auth", "secret": {"secretName": SUPEREXEC_SECRET}},
                               {"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                               {"name": "executor", "configMap": {"name": EXECUTOR_CONFIG}},
                               {"name": "relay", "secret": {"secretName": RELAY_SECRET}}]
    if tls:
        volumes.append({"name": "tls", "secret": {"secretName": TLS_SECRET}})
    small = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {**_meta(POD_NAME, ns, run_id), "labels": labels, "annotations": dict(settings.pod_annotations)},
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "restartPolicy": "Never",  # a SuperLink that died lost the run's state: the run fails (or continues anew)
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {"name": "superlink", "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
                 "command": gateway, "securityContext": secure, "resources": settings.superlink_resources,
                 "ports": [{"name": "fleet", "containerPort": FLEET_PORT},
                           {"name": "control", "containerPort": LINK_PORT}],
                 "readinessProbe": {"tcpSocket": {"port": FLEET_PORT}, "periodSeconds": 2},
                 "volumeMounts": [*mounts, {"name": "data", "mountPath": DATA_DIR},
                                  {"name": "tmp", "mountPath": "/tmp"}]},
                {"name": "superexec", "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
                 "command": superexec, "securityContext": secure, "resources": small,
                 "volumeMounts": [*mounts, {"name": "executor", "mountPath": EXECUTOR_DIR, "readOnly": True},
                                  {"name": "tmp", "mountPath": "/tmp"}]},
                # The relay's Secret is mounted here alone; it needs the SuperLink's certificate to serve TLS.
                {"name": RELAY_CONTAINER, "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
                 "command": observer_relay, "securityContext": secure, "resources": settings.relay_resources,
                 "ports": [{"name": "observer", "containerPort": RELAY_PORT}],
                 "readinessProbe": {"tcpSocket": {"port": RELAY_PORT}, "periodSeconds": 2},
                 "volumeMounts": [*([{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}] if tls else []),
                                  {"name": "relay", "mountPath": RELAY_DIR, "readOnly": True}]},
            ],
            "volumes": volumes,
        },
    }
