"""The Kubernetes launcher: each run's SuperLink and SuperExec in a namespace of their own.

Same interface as the local launcher (:class:`~fedops_control.run.launcher.SuperLinkLauncher`): the
run manager neither knows nor cares where the SuperLink runs. What this launcher owns:

- ``start``: create the run's objects (:mod:`.manifests`), then wait for the SuperLink pod to be
  ready, saying in plain words why it is not (:mod:`.podstate`) as run events; a pod that cannot
  work (crash loop, eviction, bad image name) fails the start at once, one that might still come
  (unschedulable, image pull back-off) fails it after ``start_timeout_s``, with the reason;
- while the run runs, a monitor reads the pod every ``poll_s``: :meth:`is_alive` answers from it,
  and :meth:`why_down` says what happened;
- ``stop``: delete the run's namespace (Kubernetes then deletes all in it, ServerApp pods too);
- ``abandon``: a hard stop while the pod is still starting ends the start's wait at once, so the
  namespace goes within seconds instead of after ``start_timeout_s``;
- ``adopt`` (after a restart of the control service): find the run's namespace by its labels;
  ``open`` then deletes every namespace of this service that no run took (orphans);
- ``app_route``: the run's ServerApp pods report through the observer relay in the SuperLink pod
  (:mod:`fedops_control.run.observer_relay`), at the ``superlink`` Service's relay port, verifying
  it with the SuperLink's CA from a ConfigMap; they hold no token and no key. ``start`` gives the
  relay the run's token, the control service's CA and, under mutual TLS, the relay's client
  certificate (``relay_cert``/``relay_key``: never the control service's own), as a Secret.

What needs real processes (a kubelet and the images): the SuperLink and the relay actually serving,
ServerApp pods started by Flower's Kubernetes executor, and the FL rounds. Against an API server with kwok
(no containers) a run gets as far as a ready pod and then fails at the first Control API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from fedops_common.ca import CA_CERT, CertificateAuthority
from fedops_common.logging import get_logger
from fedops_common.security import read_secret
from fedops_control.run.kubernetes.cluster import Cluster
from fedops_control.run.kubernetes.manifests import (
    FLEET_PORT,
    FLEET_SERVICE,
    LINK_PORT,
    LINK_SERVICE,
    POD_NAME,
    RELAY_CA_DIR,
    RUN_LABEL,
    ClusterSettings,
    RelayCredentials,
    link_host,
    relay_address,
    run_manifests,
)
from fedops_control.run.kubernetes.podstate import PodState, read_pod
from fedops_control.run.launcher import ControlRoute, SuperLinkHandle

log = get_logger(__name__)
StatusHook = Callable[[str, str], Awaitable[None]]  # (run_id, words): the run manager publishes a run event


class LaunchFailed(RuntimeError):
    """The run's SuperLink pod will not serve; the message says why in plain words."""


class KubernetesLauncher:
    """Runs each run's SuperLink pod in its own namespace (see the module docstring)."""

    def __init__(self, cluster: Cluster, settings: ClusterSettings, advertised_host: str,
                 ca: CertificateAuthority | None = None, start_timeout_s: float = 300.0,
                 poll_s: float = 1.0, on_status: StatusHook | None = None,
                 relay_cert: Path | None = None, relay_key: Path | None = None) -> None:
        self.cluster = cluster
        self.relay_cert, self.relay_key = relay_cert, relay_key  # the relays' client certificate (mutual TLS)
        self.settings = settings
        self.advertised_host = advertised_host
        self.ca = ca
        self.start_timeout_s = start_timeout_s
        self.poll_s = poll_s
        self.on_status = on_status
        self._states: dict[str, PodState] = {}          # by namespace: the monitor's latest reading
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self._mine: set[str] = set()                    # namespaces of runs this process started or adopted
        self._abandoned: dict[str, asyncio.Event] = {}  # by run id: starts in progress, set when the run stopped

    # ------------------------------------------------------------------ lifecycle of the launcher
    async def open(self) -> None:
        """Delete the namespaces of runs nobody adopted (orphans of an earlier process: runs that
        finished or failed while it was down), and watch the adopted ones."""
        for namespace in await asyncio.to_thread(self.cluster.run_namespaces, self.settings.owner_label):
            name = namespace["metadata"]["name"]
            if name in self._mine:
                self._watch(namespace["metadata"]["labels"].get(RUN_LABEL, ""), name)
            elif not namespace["metadata"].get("deletionTimestamp"):
                log.info("deleting an orphaned run namespace", namespace=name)
                await asyncio.to_thread(self.cluster.delete_namespace, name)

    async def close(self) -> None:
        """Stop watching; the runs' namespaces stay (the next start adopts them)."""
        for task in self._monitors.values():
            task.cancel()
        self._monitors.clear()

    # ------------------------------------------------------------------ one run
    async def start(self, run_id: str, workdir: Path, control: ControlRoute) -> SuperLinkHandle:
        """Create the run's namespace and objects; return once the SuperLink pod is ready, or raise
        :class:`LaunchFailed` (after deleting the namespace) with the reason; also when
        :meth:`abandon` is called meanwhile. ``control``: the run's token file and the control
        service's CA go to the run's observer relay."""
        abandoned = self._abandoned[run_id] = asyncio.Event()
        try:
            relay = self._relay_credentials(control)
            namespace = await asyncio.to_thread(self._free_namespace, run_id)
            self._mine.add(namespace)
            workdir.mkdir(parents=True, exist_ok=True)
            tls, ca_file = self._tls(namespace, workdir)
            try:
                for manifest in run_manifests(self.settings, run_id, tls, secrets.token_bytes(32), namespace,
                                              relay):
                    self._check(abandoned)
                    await asyncio.to_thread(self.cluster.create, manifest)
                await self._wait_ready(run_id, namespace, abandoned)
                address = await asyncio.to_thread(self._fleet_address, namespace)
            except BaseException as err:
                await asyncio.to_thread(self.cluster.delete_namespace, namespace)
                self._mine.discard(namespace)
                if isinstance(err, LaunchFailed | asyncio.CancelledError):
                    raise
                raise LaunchFailed(f"could not create the run's Kubernetes objects in {namespace}: {err}") from err
        finally:
            self._abandoned.pop(run_id, None)
        self._watch(run_id, namespace)
        return SuperLinkHandle(run_id=run_id, address=address, control_address=f"{link_host(namespace)}:{LINK_PORT}",
                               ca_file=ca_file, where=namespace)

    def app_route(self, control: ControlRoute) -> ControlRoute:
        """ServerApp pods report through the run's observer relay (in its namespace: the short
        Service name), verified with the SuperLink's CA; the relay adds the token (see :meth:`start`)."""
        return ControlRoute(address=relay_address(), ca_file=f"{RELAY_CA_DIR}/ca.crt" if self.ca is not None else "")

    def _relay_credentials(self, control: ControlRoute) -> RelayCredentials:
        """What the run's relay presents to the control service: the run's token, the CA that
        verifies the service and, when the service wants a client certificate (``control`` has
        one: its own, which stays on its host), the relays' own."""
        cert = key = b""
        if control.cert_file:
            if self.relay_cert is None or self.relay_key is None:
                raise LaunchFailed("the control service requires client certificates (mutual TLS) and the observer "
                                   "relay has none: give it one with --k8s-relay-tls-cert and --k8s-relay-tls-key")
            cert, key = self.relay_cert.read_bytes(), self.relay_key.read_bytes()
        return RelayCredentials(token=read_secret(Path(control.credential_file)) if control.credential_file else "",
                                ca=Path(control.ca_file).read_bytes() if control.ca_file else b"", cert=cert, key=key)

    def abandon(self, run_id: str) -> None:
        """The run was stopped while its pod starts: the start stops waiting within moments (no
        longer than one API call), deletes the namespace and raises :class:`LaunchFailed`."""
        event = self._abandoned.get(run_id)
        if event is not None:
            event.set()

    @staticmethod
    def _check(abandoned: asyncio.Event) -> None:
        if abandoned.is_set():
            raise LaunchFailed("the run was stopped while its SuperLink pod was starting")

    def _free_namespace(self, run_id: str) -> str:
        """The run's namespace name; a run launched again while its old namespace is still being
        deleted gets the next free suffix."""
        base = self.settings.namespace(run_id)
        name, n = base, 1
        while self.cluster.namespace_exists(name):
            n += 1
            name = f"{base[:60]}-{n}"
        return name

    def _tls(self, namespace: str, workdir: Path) -> tuple[tuple[bytes, bytes, bytes] | None, Path | None]:
        """The SuperLink's certificate for every name it is reached by, kept in the run's workdir
        too (the control service verifies the SuperLink with that CA file)."""
        if self.ca is None:
            return None, None
        hosts = sorted({self.advertised_host, LINK_SERVICE, link_host(namespace), f"{LINK_SERVICE}.{namespace}",
                        f"{link_host(namespace)}.cluster.local", f"{FLEET_SERVICE}.{namespace}.svc",
                        "127.0.0.1", "localhost"} - {"", "0.0.0.0"})
        cert, key = self.ca.issue("superlink", workdir / "tls", server_hosts=hosts)
        ca_file = workdir / "tls" / CA_CERT
        ca_file.write_bytes(self.ca.cert_pem)
        return (cert.read_bytes(), key.read_bytes(), self.ca.cert_pem), ca_file

    async def _wait_ready(self, run_id: str, namespace: str, abandoned: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        said = ""
        while True:
            self._check(abandoned)
            state = read_pod(await asyncio.to_thread(self.cluster.read_pod, namespace, POD_NAME))
            if state.words and state.words != said:
                said = state.words
                await self._say(run_id, state.words)
            if state.ready:
                await self._say(run_id, f"the SuperLink pod is ready in namespace {namespace}")
                return
            if state.final:
                raise LaunchFailed(state.words)
            if loop.time() >= deadline:
                raise LaunchFailed(f"the SuperLink pod was not ready within {self.start_timeout_s:.0f}s: "
                                   f"{state.words or 'no reason given by Kubernetes'}")
            with contextlib.suppress(TimeoutError):  # the next reading, or at once when the run is stopped
                await asyncio.wait_for(abandoned.wait(), self.poll_s)

    def _fleet_address(self, namespace: str) -> str:
        """Where agents reach the run's Fleet gateway: the node port on the advertised host, the
        load balancer's address, or the in-cluster name."""
        service = self.cluster.read_service(namespace, FLEET_SERVICE)
        kind = service["spec"].get("type", "ClusterIP")
        if kind == "NodePort":
            return f"{self.advertised_host}:{service['spec']['ports'][0]['nodePort']}"
        if kind == "LoadBalancer":
            for ingress in (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
                return f"{ingress.get('hostname') or ingress.get('ip')}:{FLEET_PORT}"
            return f"{self.advertised_host}:{FLEET_PORT}"  # no address assigned (yet): the operator's DNS name
        return f"{FLEET_SERVICE}.{namespace}.svc:{FLEET_PORT}"

    async def _say(self, run_id: str, words: str) -> None:
        if self.on_status is not None:
            try:
                await self.on_status(run_id, words)
            except Exception as err:  # an event that could not be stored must not fail the run
                log.warning("could not publish the SuperLink status", run_id=run_id, error=str(err))

    def _watch(self, run_id: str, namespace: str) -> None:
        if namespace not in self._monitors:
            self._monitors[namespace] = asyncio.create_task(self._monitor(run_id, namespace))

    async def _monitor(self, run_id: str, namespace: str) -> None:
        """Read the pod until it can no longer serve; each new reason becomes a run event."""
        said = ""
        while True:
            try:
                state = read_pod(await asyncio.to_thread(self.cluster.read_pod, namespace, POD_NAME))
            except Exception as err:  # the API server is briefly unreachable: keep the last reading
                log.warning("could not read the SuperLink pod", namespace=namespace, error=str(err))
                await asyncio.sleep(self.poll_s)
                continue
            self._states[namespace] = state
            if state.words and state.words != said:
                said = state.words
                await self._say(run_id, state.words)
            if state.final:
                return
            await asyncio.sleep(self.poll_s)

    async def stop(self, handle: SuperLinkHandle) -> None:
        """Delete the run's namespace: its pods (ServerApps too), Services, Secrets and policies."""
        monitor = self._monitors.pop(handle.where, None)
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        await asyncio.to_thread(self.cluster.delete_namespace, handle.where)
        self._states.pop(handle.where, None)
        self._mine.discard(handle.where)

    def is_alive(self, handle: SuperLinkHandle) -> bool:
        """Whether the monitor's latest reading says the pod can still serve."""
        state = self._states.get(handle.where)
        return state is None or not state.final

    def why_down(self, handle: SuperLinkHandle) -> str:
        """The pod's state in plain words once it cannot serve."""
        state = self._states.get(handle.where)
        return state.words if state is not None else ""

    def adopt(self, run_id: str, workdir: Path, address: str) -> SuperLinkHandle | None:
        """The run's namespace with a pod that can still serve, found by its labels (None if gone);
        :meth:`open` then watches it."""
        for namespace in self.cluster.run_namespaces(self.settings.owner_label, run_id):
            name = namespace["metadata"]["name"]
            if namespace["metadata"].get("deletionTimestamp"):
                continue
            if read_pod(self.cluster.read_pod(name, POD_NAME)).final:
                continue  # the pod is dead: open() deletes the namespace; the run is launched again
            self._mine.add(name)
            ca_file = workdir / "tls" / CA_CERT
            return SuperLinkHandle(run_id=run_id, address=address, control_address=f"{link_host(name)}:{LINK_PORT}",
                                   ca_file=ca_file if ca_file.exists() else None, where=name)
        return None

    def expect_frameworks(self, frameworks: list[str]) -> None:
        """Nothing to warm: ServerApps are pods of Flower's Kubernetes executor."""
