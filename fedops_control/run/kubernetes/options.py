"""The control service's Kubernetes launcher options, and building the launcher from them.

Kept apart from the launcher so that the control service imports the ``kubernetes`` client (the
``kubernetes`` extra) only when this launcher is chosen: the local launcher stays the default and
needs none of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedops_control.run.kubernetes.manifests import ClusterSettings

if TYPE_CHECKING:
    from fedops_common.ca import CertificateAuthority
    from fedops_control.run.kubernetes.launcher import KubernetesLauncher, StatusHook


LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def check_label_value(value: str) -> str:
    """'' when ``value`` may be a Kubernetes label value, else why not (the API server would refuse
    every run namespace, so the flag is refused at start instead)."""
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not LABEL_VALUE.match(value):
        return f"{value!r} is not a label value (letters, digits, '-', '_', '.'; alphanumeric at both ends)"
    return ""


@dataclass(frozen=True)
class KubernetesOptions:
    """``fedops-control --launcher kubernetes ...``"""

    image: str                      # the SuperLink/SuperExec/ServerApp image (carries fedops_control and flwr)
    control_address: str = ""       # host:port run pods (their observer relay) reach this service at
    kubeconfig: Path | None = None  # None: the pod's in-cluster service account
    context: str | None = None
    namespace_prefix: str = "fedops-"
    fleet_service_type: str = "NodePort"
    control_namespace: str = "fedops"
    start_timeout_s: float = 300.0
    service_account: str = ""       # this service's ServiceAccount (in control_namespace): bound per run namespace
    run_role: str = "fedops-run-namespace"  # the ClusterRole it binds itself to in each run namespace
    owner: str = ""                 # the owner label of its run namespaces ('' = control_namespace)
    control_instance: str = ""      # its pods' app.kubernetes.io/instance ('' = any fedops-control pod there)
    relay_tls_cert: Path | None = None  # the observer relays' client certificate and key (under mutual TLS)
    relay_tls_key: Path | None = None


def control_pod_labels(instance: str) -> dict[str, str]:
    """The labels of the pods a run namespace admits to its Control API: this service's. With the
    release's instance label, a second release in the same namespace is not admitted to this one's runs."""
    labels = dict(ClusterSettings(image="").control_pod_labels)
    return {**labels, "app.kubernetes.io/instance": instance} if instance else labels


def build_launcher(options: KubernetesOptions, advertised_host: str, ca: CertificateAuthority | None,
                   on_status: StatusHook | None) -> KubernetesLauncher:
    """Connect to the API server and make the launcher."""
    from fedops_control.run.kubernetes.cluster import Cluster, connect
    from fedops_control.run.kubernetes.launcher import KubernetesLauncher

    settings = ClusterSettings(image=options.image, control_address=options.control_address,
                               namespace_prefix=options.namespace_prefix,
                               fleet_service_type=options.fleet_service_type,
                               control_namespace=options.control_namespace,
                               run_role=options.run_role, owner=options.owner,
                               control_pod_labels=control_pod_labels(options.control_instance),
                               control_subject={"kind": "ServiceAccount", "name": options.service_account,
                                                "namespace": options.control_namespace}
                               if options.service_account else None)
    return KubernetesLauncher(Cluster(connect(options.kubeconfig, options.context)), settings, advertised_host,
                              ca=ca, start_timeout_s=options.start_timeout_s, on_status=on_status,
                              relay_cert=options.relay_tls_cert, relay_key=options.relay_tls_key)
