"""A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver (TLS, a token
file, RBAC), kube-scheduler, kube-controller-manager (quotas, namespace deletion) and kwok, which
plays a node and the kubelet's pod phases (there are no containers).

`scripts/install_k8s.sh` (run by `make test`) builds the binaries into ~/.cache/fedops-k8s/bin; a
test that needs them and cannot find them fails with a message saying so (it does not skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fedops_common.ca import CA_CERT, CertificateAuthority
from fedops_common.net import free_port, wait_for_port

BIN = Path(os.environ.get("FEDOPS_K8S_BIN", Path.home() / ".cache" / "fedops-k8s" / "bin"))
COMPONENTS = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kwok")
ADMIN_TOKEN = "fedops-test-admin-token-0123456789"
CONTROL_TOKEN = "fedops-test-control-token-0123456789"  # the user "fedops-control": no rights but RBAC's
CONTROL_USER = "fedops-control"
NODE = "kwok-node-0"
NODE_CPU = "4"
NODE_MEMORY = "8Gi"
KWOK_STAGES = Path(__file__).parent / "kwok" / "stages.yaml"  # node and pod phases; see the file
KUBELET_ANNOTATION = "fedops.test/kubelet"  # on a pod: how kwok plays its kubelet (crash, nopull)


BUILD_STATUS = BIN.parent / "build.status"  # written by scripts/install_k8s.sh --background
BUILD_WAIT_S = 90 * 60.0


def _missing(what: str) -> AssertionError:
    return AssertionError(f"{what} is not built: run scripts/install_k8s.sh (make test does)")


def wait_for_build(timeout_s: float = BUILD_WAIT_S) -> None:
    """Wait while ``make test``'s background build of the binaries runs (a fresh machine: about 15 min
    on 2 cores beside the other tests); AssertionError with its log's end if it failed or is still
    running at the timeout."""
    started = time.monotonic()
    deadline = started + timeout_s
    while BUILD_STATUS.exists():
        state, _, value = BUILD_STATUS.read_text().strip().partition(" ")
        if state == "running" and value.isdigit() and _alive(int(value)) and time.monotonic() < deadline:
            time.sleep(5)
            continue
        if state == "exit" and value == "0":
            if time.monotonic() - started > 1:  # in the test's output (-rA): what a fresh machine waits
                print(f"waited {time.monotonic() - started:.0f} s for the background Kubernetes build",
                      file=sys.stderr)
            return
        log = BUILD_STATUS.with_name("build.log")
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise AssertionError(f"the background Kubernetes build ({BUILD_STATUS}: {state} {value}) did not "
                             f"finish; the end of {log}:\n{tail}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def binaries() -> dict[str, Path]:
    """The control-plane binaries; AssertionError naming the missing ones."""
    wait_for_build()
    found = {name: BIN / name for name in COMPONENTS}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise _missing(", ".join(missing) + f" (in {BIN})")
    return found


def helm() -> Path:
    """The helm binary the chart tests run."""
    wait_for_build()
    path = BIN / "helm"
    if not os.access(path, os.X_OK):
        raise _missing(f"helm ({path})")
    return path


def kubeconfig_text(server: str, ca_file: Path, token: str) -> str:
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n"
            f"    certificate-authority: {ca_file}\nusers:\n- name: test\n  user:\n    token: {token}\n"
            f"contexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n")


@dataclass
class KubeCluster:
    """The control plane under ``root``; :meth:`start` returns once the API serves and the node is Ready."""

    root: Path
    server: str = ""
    admin_kubeconfig: Path = Path()
    control_kubeconfig: Path = Path()
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        log.close()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _wait(self, what: str, check: Any, timeout_s: float = 60.0) -> Any:
        """Poll ``check()`` until truthy; fail at once, with its log, when a component exits."""
        deadline = time.monotonic() + timeout_s
        error: Exception | None = None
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode} while waiting for {what}:\n"
                                         f"{self.log_tail(name)}")
            try:
                result = check()
                if result:
                    return result
            except Exception as err:
                error = err
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {error})")

    def start(self) -> KubeCluster:
        bins = binaries()
        self.root.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.create(self.root / "ca", "kube test CA")
        cert, key = ca.issue("apiserver", self.root / "pki", server_hosts=["127.0.0.1", "localhost"])
        ca_file = self.root / "ca" / CA_CERT
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.root / "sa.key").write_bytes(sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
        (self.root / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (self.root / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin-uid,"system:masters"\n'
                                              f"{CONTROL_TOKEN},{CONTROL_USER},fedops-control-uid\n")
        etcd_port, peer_port, api_port = free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1")
        self._spawn("etcd", [str(bins["etcd"]), "--data-dir", str(self.root / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}"])
        wait_for_port("127.0.0.1", etcd_port, 30.0)
        self._spawn("kube-apiserver", [
            str(bins["kube-apiserver"]), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(api_port),
            "--endpoint-reconciler-type", "none",  # no kubernetes Service endpoints: loopback is not allowed there
            "--tls-cert-file", str(cert), "--tls-private-key-file", str(key), "--client-ca-file", str(ca_file),
            "--service-account-key-file", str(self.root / "sa.pub"),
            "--service-account-signing-key-file", str(self.root / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--token-auth-file", str(self.root / "tokens.csv"), "--authorization-mode", "RBAC",
            "--service-cluster-ip-range", "10.96.0.0/16", "--service-node-port-range", "30000-32767"])
        self.server = f"https://127.0.0.1:{api_port}"
        self.admin_kubeconfig = self.root / "admin.kubeconfig"
        self.admin_kubeconfig.write_text(kubeconfig_text(self.server, ca_file, ADMIN_TOKEN))
        self.control_kubeconfig = self.root / "control.kubeconfig"
        self.control_kubeconfig.write_text(kubeconfig_text(self.server, ca_file, CONTROL_TOKEN))
        core = self.core()
        self._wait("the API server", lambda: core.list_namespace() is not None and core.read_namespace("default"))
        admin = str(self.admin_kubeconfig)
        # No serving port (--secure-port 0), so no authentication/authorization kubeconfigs either.
        self._spawn("kube-scheduler", [str(bins["kube-scheduler"]), "--kubeconfig", admin,
                                       "--leader-elect=false", "--secure-port", "0"])
        self._spawn("kube-controller-manager", [
            str(bins["kube-controller-manager"]), "--kubeconfig", admin, "--leader-elect=false", "--secure-port", "0",
            "--controllers", "namespace,resourcequota,serviceaccount",
            "--service-account-private-key-file", str(self.root / "sa.key"), "--root-ca-file", str(ca_file)])
        self._spawn("kwok", [str(bins["kwok"]), "--kubeconfig", admin, "--config", str(KWOK_STAGES),
                             "--manage-nodes-with-annotation-selector",
                             "kwok.x-k8s.io/node=fake", "--server-address", f"127.0.0.1:{free_port('127.0.0.1')}"])
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": NODE, "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": NODE, "type": "kwok"}},
            "status": {"allocatable": {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": "110"},
                       "capacity": {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": "110"}}})

        def node_ready() -> bool:
            node = core.read_node(NODE)
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

        self._wait("the kwok node to be Ready", node_ready)
        # The API server taints a new node not-ready; the node lifecycle controller lifts the taint
        # once the node is Ready. That controller is not run here (it would also evict pods when kwok's
        # node heartbeats pause), so the harness lifts it as the controller would.
        core.patch_node(NODE, {"spec": {"taints": []}})
        return self

    def api(self, kubeconfig: Path | None = None) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.admin_kubeconfig))

    def core(self, kubeconfig: Path | None = None) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api(kubeconfig))

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):  # etcd last: the others need it to stop
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
