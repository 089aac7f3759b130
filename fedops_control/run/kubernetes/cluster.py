"""The few Kubernetes API calls the launcher makes, on the official ``kubernetes`` client.

The client is synchronous; the launcher calls these through :func:`asyncio.to_thread`. Objects go
in and come out as plain dicts (the API's camelCase JSON), so manifests and pod states are ours.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from fedops_control.run.kubernetes.manifests import MANAGED_BY, MANAGER, OWNER_LABEL, RUN_LABEL, Manifest

QUOTA_WAIT_S = 15.0


def connect(kubeconfig: Path | None, context: str | None = None) -> client.ApiClient:
    """An API client: from ``kubeconfig`` when given, else the pod's in-cluster service account
    (the Helm chart's deployment), so one flag decides and nothing is guessed."""
    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig), context=context)
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _settling(body: str, namespace: str | None) -> bool:
    """Whether a 403 is one the API server takes back moments later, in a namespace just made:

    - a pod created right after its namespace's ResourceQuota is refused until the quota controller
      has computed the quota's usage (a fraction of a second);
    - an object created right after the RoleBinding that grants the control service its run role
      there is refused until the RBAC authorizer's cache has the binding (seen taking over a second
      on a loaded 2-core CI machine: ``resourcequotas is forbidden: User ... cannot create``).
    """
    return "status unknown for quota" in body or (namespace is not None and "cannot create resource" in body)


class Cluster:
    """Create, read and delete the objects of run namespaces."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.dynamic = DynamicClient(api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        plain: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return plain

    def create(self, manifest: Manifest, dry_run: bool = False) -> None:
        """Create any object given as a manifest (the API's discovery finds its resource);
        ``dry_run``: the API server validates and admits it but stores nothing."""
        resource = self.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        namespace = manifest["metadata"].get("namespace") if resource.namespaced else None
        deadline = time.monotonic() + QUOTA_WAIT_S
        while True:
            try:
                resource.create(body=manifest, namespace=namespace, **({"dry_run": "All"} if dry_run else {}))
                return
            except ApiException as err:
                if err.status != 403 or not _settling(str(err.body), namespace) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def run_namespaces(self, owner: str, run_id: str = "") -> list[dict[str, Any]]:
        """The run namespaces of the control service labelled ``owner`` (for one run, or all),
        terminating ones included."""
        selector = f"{MANAGED_BY}={MANAGER},{OWNER_LABEL}={owner}" + (f",{RUN_LABEL}={run_id}" if run_id else "")
        return [self._plain(ns) for ns in self.core.list_namespace(label_selector=selector).items]

    def namespace_exists(self, name: str) -> bool:
        try:
            self.core.read_namespace(name)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod as the API serves it, or None when it is gone."""
        try:
            return self._plain(self.core.read_namespaced_pod(name, namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def read_service(self, namespace: str, name: str) -> dict[str, Any]:
        return self._plain(self.core.read_namespaced_service(name, namespace))

    def delete_namespace(self, name: str) -> None:
        """Delete a run namespace and, with it, everything in it (idempotent). Kubernetes' namespace
        controller removes the contents and then the namespace; until then it is Terminating."""
        try:
            self.core.delete_namespace(name, propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                raise
