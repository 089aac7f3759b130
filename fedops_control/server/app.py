"""`fedops-control`: the control service (gRPC, with reflection and health)."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.ca import CertificateAuthority
from fedops_common.grpc_channel import SERVER_OPTIONS
from fedops_common.logging import get_logger
from fedops_common.proc import until_stop_signal
from fedops_common.proto import (
    access_pb2,
    access_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
)
from fedops_common.security import read_secret, write_secret
from fedops_common.telemetry import TelemetryWriter
from fedops_common.telemetry.actor import ENV_ELASTICSEARCH_URL, start_telemetry
from fedops_common.telemetry.metrics_http import serve_metrics
from fedops_control.access.audit import AuditLog
from fedops_control.access.interceptor import AccessControl, AuthInterceptor
from fedops_control.access.servicer import AccessServicer
from fedops_control.access.tokens import TokenStore
from fedops_control.agents.liveness import Liveness
from fedops_control.agents.sessions import AgentSessions, LivenessSettings
from fedops_control.metrics import register_state_collector, watch_event_loop
from fedops_control.registry.store import ModelStore
from fedops_control.run.diagnosis import SUPERLINK_STATUS
from fedops_control.run.events import EventBus
from fedops_control.run.kubernetes.options import KubernetesOptions, build_launcher, check_label_value
from fedops_control.run.launcher import LocalProcessLauncher, SuperLinkLauncher
from fedops_control.run.manager import RunManager
from fedops_control.run.preflight import Preflight
from fedops_control.server.agent_servicer import AgentServicer
from fedops_control.server.control_servicer import ControlServicer
from fedops_control.server.observer_servicer import ObserverServicer
from fedops_control.server.rpc_metrics import RpcMetricsInterceptor
from fedops_control.state.db import DatabaseWriter, open_database, sqlite_url
from fedops_control.state.models import ClientRow

log = get_logger(__name__)
SERVICE_NAMES = (
    control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["ObserverService"].full_name,
    access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
)
ENV_ADMIN_TOKEN = "FEDOPS_ADMIN_TOKEN"


@dataclass(frozen=True)
class Security:
    """How the control service protects itself and its runs."""

    auth: bool = True                 # tokens and roles on every RPC
    admin_token_file: Path | None = None
    tls_cert: Path | None = None      # serve TLS with this certificate (and key)
    tls_key: Path | None = None
    tls_ca: Path | None = None        # CA that issued tls_cert; with mtls, client certificates must chain to it
    mtls: bool = False
    superlink_tls: bool = True        # run SuperLinks with TLS and SuperNode authentication

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for the gRPC port, or None for plaintext."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        root = self.tls_ca.read_bytes() if self.tls_ca is not None else None
        return grpc.ssl_server_credentials([(self.tls_key.read_bytes(), self.tls_cert.read_bytes())],
                                           root_certificates=root, require_client_auth=self.mtls)


def bootstrap_admin(tokens: TokenStore, token_file: Path) -> None:
    """Make sure an admin token exists: FEDOPS_ADMIN_TOKEN, else the token file, else a new one written there."""
    secret = os.environ.get(ENV_ADMIN_TOKEN, "").strip()
    if not secret and token_file.exists():
        secret = read_secret(token_file)
    if not secret:
        secret = f"fop_{secrets.token_urlsafe(32)}"
    if len(secret) < 16:
        raise ValueError(f"{ENV_ADMIN_TOKEN}: at least 16 characters")
    tokens.ensure_admin(secret)
    if not token_file.exists():
        write_secret(token_file, secret)


class AgentTargets:
    """Prometheus HTTP service discovery: the /metrics endpoint of every connected agent.

    Served on the /metrics thread, never the event loop. The agents that have an endpoint are read
    from the database at most once per ``max_age_s`` (Prometheus refreshes HTTP-SD every 60 s by
    default); who is connected is read from memory at every call.
    """

    def __init__(self, sessions: sessionmaker[Session], agents: AgentSessions, max_age_s: float = 5.0) -> None:
        self._sessions, self._agents, self._max_age_s = sessions, agents, max_age_s
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._endpoints: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._read_at > self._max_age_s:
                with self._sessions() as db:
                    rows = db.execute(select(ClientRow.id, ClientRow.metrics_address, ClientRow.device)
                                      .where(ClientRow.metrics_address != ""))
                    self._endpoints = sorted((cid, address, device) for cid, address, device in rows)
                self._read_at = time.monotonic()
            endpoints = self._endpoints
        return [{"targets": [address],
                 "labels": {"client_id": cid, "hostname": str(device.get("hostname", "")),
                            "device_id": str(device.get("device_id", ""))}}
                for cid, address, device in endpoints if self._agents.is_connected(cid)]


def tune_garbage_collector() -> None:
    """Keep garbage collections from stalling the event loop of a large fleet.

    With 10,000 agents the service holds millions of objects (their sessions), and CPython's
    full collections scanned them all: 44 collections of 0.1-1.2 s each while 10,000 agents
    connected (bench/README.md). The libraries' objects, alive for the whole process, are frozen
    out of every collection. The young generation is collected every 200,000 allocations, not 700:
    each session's wait for its next message (grpc.aio's read: coroutines, a Future, the message,
    about 15 objects) is renewed at every heartbeat, so at 10,000 agents the young generation holds
    ~150,000 live objects whatever the threshold, and a young collection took 50-150 ms of CPU. At
    10,000 allocations (the previous setting) that was a pause every ~0.3 s: event-loop lag p99
    250 ms and operator p99 over 100 ms; at 200,000, lag p99 25 ms and every operator call's p99
    under 25 ms (bench/README.md, 2026-12-01). Cyclic garbage waits longer for its collection (a
    few MB at most); everything else is freed by reference counting as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 10, 10)


async def serve(listen: str, data_dir: Path, database_url: str, superlink_host: str,
                writer: TelemetryWriter | None = None, metrics_listen: str = "", superlink_bind: str = "127.0.0.1",
                stop_runs_on_exit: bool = False, ready: asyncio.Event | None = None,
                security: Security | None = None, spare_superlink: bool = True,
                kubernetes: KubernetesOptions | None = None, liveness: LivenessSettings | None = None,
                warm_apps: bool = True, database_threads: int = 1, superlink_state_on_disk: bool = False) -> None:
    """Run the control service until cancelled or signalled."""
    security = security or Security()
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = database_url or sqlite_url(data_dir / "control.db")
    sessions = open_database(database_url)
    write = DatabaseWriter(database_threads)
    bus = EventBus(sessions, writer)
    agents = AgentSessions(liveness)
    models = ModelStore(sessions, data_dir / "models")
    tokens = TokenStore(sessions)
    access = AccessControl(tokens, enabled=security.auth)
    if security.auth:
        bootstrap_admin(tokens, security.admin_token_file or data_dir / "admin.token")
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[RpcMetricsInterceptor(),
                                                                       AuthInterceptor(access, AuditLog(writer))])
    credentials = security.server_credentials()
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError as err:  # gRPC says only "Failed to bind"
        raise typer.BadParameter(f"cannot listen on {listen}: the port is in use, or the host is not an "
                                 "address of this machine", param_hint="--listen") from err
    host = listen.rsplit(":", 1)[0]
    local_host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host
    superlink_ca = (CertificateAuthority.load_or_create(data_dir / "superlink-ca", "FedOps SuperLink CA")
                    if security.superlink_tls else None)
    launcher: SuperLinkLauncher
    if kubernetes is not None:  # each run's SuperLink in a namespace of its own
        launcher = build_launcher(kubernetes, superlink_host, superlink_ca,
                                  on_status=lambda run_id, words: bus.publish(run_id, SUPERLINK_STATUS, words))
    else:
        launcher = LocalProcessLauncher(bind_host=superlink_bind, advertised_host=superlink_host, ca=superlink_ca,
                                        spare_dir=data_dir / "superlinks" if spare_superlink else None,
                                        warm_apps=warm_apps, state_on_disk=superlink_state_on_disk)
    preflight = Preflight()  # StartRun sends the checks (RunManager), agents' answers arrive (AgentServicer)
    runs = RunManager(sessions, bus, agents, models, launcher, data_dir, control_address=f"{local_host}:{port}",
                      writer=writer, tokens=tokens if security.auth else None,
                      control_tls=(security.tls_ca, security.tls_cert, security.tls_key) if credentials else None,
                      preflight=preflight, write=write)
    control_pb2_grpc.add_ControlServiceServicer_to_server(
        ControlServicer(sessions, runs, agents, models, bus, require_enrolment=security.auth, access=access), server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(sessions, agents, runs, access, preflight, write),
                                                      server)
    agent_pb2_grpc.add_ObserverServiceServicer_to_server(ObserverServicer(runs, models, access), server)
    access_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(sessions, access), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    await server.start()
    tune_garbage_collector()
    if metrics_listen:
        register_state_collector(sessions, agents)
        try:
            _, metrics_address = serve_metrics(metrics_listen, {"/sd/agents": AgentTargets(sessions, agents)})
        except (OSError, ValueError) as err:
            raise typer.BadParameter(f"cannot serve metrics on {metrics_listen}: {err}",
                                     param_hint="--metrics-listen") from err
        log.info("metrics served", address=metrics_address)
        print(f"fedops-control metrics on http://{metrics_address}/metrics", flush=True)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("control service listening", address=f"{host}:{port}", data_dir=str(data_dir), auth=security.auth,
             tls=credentials is not None, mtls=security.mtls, superlink_tls=security.superlink_tls)
    print(f"fedops-control listening on {host}:{port}", flush=True)
    await runs.recover()
    await launcher.open()  # after recover: spares that runs took are theirs
    watchdog = asyncio.create_task(runs.watchdog())
    background = [asyncio.create_task(Liveness(sessions, agents, write).run()),
                  asyncio.create_task(watch_event_loop())]
    if ready is not None:
        ready.set()
    try:
        await until_stop_signal()
    finally:
        watchdog.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)  # the last liveness batch is written
        await launcher.close()  # first: runs stopped next must not warm up a new spare
        await runs.shutdown(stop_runs=stop_runs_on_exit)
        await server.stop(grace=2)
        write.close()


def run(
    listen: Annotated[str, typer.Option(help="host:port to serve gRPC on")] = "127.0.0.1:50051",
    data_dir: Annotated[Path, typer.Option(help="state, models and run directories")] = Path(".fedops/control"),
    database_url: Annotated[str, typer.Option(help="SQLAlchemy URL; default: SQLite file in data-dir")] = "",
    database_threads: Annotated[
        int, typer.Option(min=1, max=32, help="threads for the agents' database writes; more than 1 only pays off "
                                              "against a PostgreSQL many milliseconds away (state/db.py)")
    ] = 1,
    superlink_host: Annotated[str, typer.Option(help="host agents use to reach run SuperLinks")] = "127.0.0.1",
    superlink_bind: Annotated[
        str, typer.Option(help="interface run SuperLinks listen on (0.0.0.0 when agents are on other hosts)")
    ] = "127.0.0.1",
    elasticsearch_url: Annotated[
        str, typer.Option(envvar=ENV_ELASTICSEARCH_URL, help="ship logs, run events and round metrics here")
    ] = "",
    metrics_listen: Annotated[
        str, typer.Option(help="host:port of /metrics and /sd/agents ('' = off, port 0 = any free port)")
    ] = "127.0.0.1:9464",
    stop_runs_on_exit: Annotated[
        bool,
        typer.Option(
            help="fail and stop active runs on exit; by default they go on and are re-attached on the next start"
        ),
    ] = False,
    auth: Annotated[
        bool, typer.Option(help="require a token with the right role on every RPC (off only for isolated experiments)")
    ] = True,
    admin_token_file: Annotated[
        Path | None,
        typer.Option(
            help=f"bootstrap admin token (created if missing; {ENV_ADMIN_TOKEN} seeds it); default DATA_DIR/admin.token"
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="serve TLS with this certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="private key of --tls-cert")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA that issued --tls-cert; verifies clients with --mtls")] = None,
    mtls: Annotated[bool, typer.Option(help="require client certificates issued by --tls-ca (mutual TLS)")] = False,
    superlink_tls: Annotated[
        bool, typer.Option(help="run SuperLinks with TLS and SuperNode authentication (only the run's agents get in)")
    ] = True,
    spare_superlink: Annotated[
        bool,
        typer.Option(
            help="keep one SuperLink started ahead of the next run (about 2 s off StartRun; one idle process pair)"
        ),
    ] = True,
    warm_apps: Annotated[
        bool,
        typer.Option(
            envvar="FEDOPS_WARM_APPS",
            help="fork each run's ServerApp from a template that has Flower and the app's framework imported "
                 "(local launcher; the spare SuperLink's template holds them, about 0.8 GB with torch); "
                 "--no-warm-apps: a new flwr-serverapp process per run, as Flower does"
        ),
    ] = True,
    superlink_state_on_disk: Annotated[
        bool,
        typer.Option(
            help="local launcher: keep each SuperLink's state (messages and their arrays) in a SQLite file in "
                 "the run's directory, not in memory (Flower's default, with about half the overhead per phase): "
                 "for models too large to hold a phase's replies in RAM"
        ),
    ] = False,
    launcher: Annotated[
        str, typer.Option(help="where runs' SuperLinks run: 'local' (here) or 'kubernetes' (a namespace each)")
    ] = "local",
    kubeconfig: Annotated[
        Path | None, typer.Option(help="kubernetes launcher: kubeconfig file (default: in-cluster service account)")
    ] = None,
    k8s_image: Annotated[str, typer.Option(help="kubernetes launcher: image of SuperLink, SuperExec, ServerApps")] = "",
    k8s_control_address: Annotated[
        str, typer.Option(help="kubernetes launcher: host:port run pods reach this service at (the observer relay "
                               "of each run forwards its ServerApp's reports there), e.g. "
                               "fedops-control.fedops.svc:50051; the TLS certificate must name the host")
    ] = "",
    k8s_relay_tls_cert: Annotated[
        Path | None, typer.Option(help="kubernetes launcher, with --mtls: the client certificate (from --tls-ca) "
                                       "run relays present; copied into each run namespace as a Secret")
    ] = None,
    k8s_relay_tls_key: Annotated[Path | None, typer.Option(help="private key of --k8s-relay-tls-cert")] = None,
    k8s_namespace_prefix: Annotated[str, typer.Option(help="kubernetes launcher: run namespaces' prefix")] = "fedops-",
    k8s_fleet_service: Annotated[
        str, typer.Option(help="kubernetes launcher: Fleet Service type (NodePort, LoadBalancer, ClusterIP)")
    ] = "NodePort",
    k8s_control_namespace: Annotated[
        str, typer.Option(help="kubernetes launcher: this service's namespace (its pods may reach the Control API)")
    ] = "fedops",
    k8s_service_account: Annotated[
        str, typer.Option(help="kubernetes launcher: this service's ServiceAccount, bound to its role in each run "
                               "namespace ('' = its credentials need no binding)")
    ] = "",
    k8s_start_timeout: Annotated[
        float, typer.Option(help="kubernetes launcher: seconds a SuperLink pod gets to become ready")
    ] = 300.0,
    k8s_run_role: Annotated[
        str, typer.Option(help="kubernetes launcher: the ClusterRole this service binds itself to in each run "
                               "namespace (the Helm chart names it from the release)")
    ] = "fedops-run-namespace",
    k8s_owner: Annotated[
        str, typer.Option(help="kubernetes launcher: fedops.io/owner label of this service's run namespaces "
                               "('' = --k8s-control-namespace); a restart deletes orphans with this owner only")
    ] = "",
    k8s_control_instance: Annotated[
        str, typer.Option(help="kubernetes launcher: this service's pods' app.kubernetes.io/instance label (the "
                               "Helm release): only they reach run Control APIs ('' = any fedops-control pod "
                               "in --k8s-control-namespace)")
    ] = "",
    heartbeat_interval: Annotated[
        int, typer.Option(help="seconds between an agent's heartbeats (agents are told at registration)")
    ] = LivenessSettings.heartbeat_interval_s,
    liveness_timeout: Annotated[
        float, typer.Option(help="seconds without a message after which an agent's session is ended (offline)")
    ] = LivenessSettings.timeout_s,
    liveness_persist_interval: Annotated[
        float, typer.Option(help="seconds between batches that store agents' last heartbeats (their staleness)")
    ] = LivenessSettings.persist_interval_s,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start the FedOps control service."""
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    for name, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key), ("--tls-ca", tls_ca),
                       ("--kubeconfig", kubeconfig), ("--k8s-relay-tls-cert", k8s_relay_tls_cert),
                       ("--k8s-relay-tls-key", k8s_relay_tls_key)):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"no such file {path}", param_hint=name)
    if (mtls or tls_cert) and tls_ca is None:
        raise typer.BadParameter("--tls-ca is required with TLS (runs verify this service with it)",
                                 param_hint="--tls-ca")
    if mtls and tls_cert is None:
        raise typer.BadParameter("--mtls needs --tls-cert and --tls-key", param_hint="--mtls")
    if launcher not in ("local", "kubernetes"):
        raise typer.BadParameter("'local' or 'kubernetes'", param_hint="--launcher")
    if launcher == "kubernetes" and not k8s_image:
        raise typer.BadParameter("the kubernetes launcher needs --k8s-image", param_hint="--k8s-image")
    if k8s_fleet_service not in ("NodePort", "LoadBalancer", "ClusterIP"):
        raise typer.BadParameter("NodePort, LoadBalancer or ClusterIP", param_hint="--k8s-fleet-service")
    if launcher == "kubernetes" and (problem := check_label_value(k8s_owner or k8s_control_namespace)):
        raise typer.BadParameter(problem, param_hint="--k8s-owner" if k8s_owner else "--k8s-control-namespace")
    if launcher == "kubernetes" and k8s_control_instance and (problem := check_label_value(k8s_control_instance)):
        raise typer.BadParameter(problem, param_hint="--k8s-control-instance")
    if launcher == "kubernetes" and not k8s_run_role:
        raise typer.BadParameter("the ClusterRole's name is required", param_hint="--k8s-run-role")
    if launcher == "kubernetes" and (not k8s_control_address or ":" not in k8s_control_address):
        raise typer.BadParameter("the kubernetes launcher needs the host:port run pods reach this service at "
                                 "(e.g. fedops-control.fedops.svc:50051)", param_hint="--k8s-control-address")
    if (k8s_relay_tls_cert is None) != (k8s_relay_tls_key is None):
        raise typer.BadParameter("--k8s-relay-tls-cert and --k8s-relay-tls-key go together",
                                 param_hint="--k8s-relay-tls-cert")
    if launcher == "kubernetes" and mtls and k8s_relay_tls_cert is None:
        raise typer.BadParameter("with --mtls, run relays need a client certificate from --tls-ca (not this "
                                 "service's own)", param_hint="--k8s-relay-tls-cert")
    kubernetes = KubernetesOptions(
        image=k8s_image, control_address=k8s_control_address, kubeconfig=kubeconfig,
        namespace_prefix=k8s_namespace_prefix,
        fleet_service_type=k8s_fleet_service, control_namespace=k8s_control_namespace,
        start_timeout_s=k8s_start_timeout, service_account=k8s_service_account, run_role=k8s_run_role,
        owner=k8s_owner, control_instance=k8s_control_instance, relay_tls_cert=k8s_relay_tls_cert,
        relay_tls_key=k8s_relay_tls_key) if launcher == "kubernetes" else None
    try:
        liveness = LivenessSettings(heartbeat_interval, liveness_timeout, liveness_persist_interval)
    except ValueError as err:
        hint = next(option for word, option in (("timeout", "--liveness-timeout"),
                                                ("persist", "--liveness-persist-interval"),
                                                ("", "--heartbeat-interval")) if word in str(err))
        raise typer.BadParameter(str(err), param_hint=hint) from err
    security = Security(auth=auth, admin_token_file=admin_token_file, tls_cert=tls_cert, tls_key=tls_key,
                        tls_ca=tls_ca, mtls=mtls, superlink_tls=superlink_tls)
    telemetry = start_telemetry("fedops-control", data_dir / "telemetry", elasticsearch_url=elasticsearch_url,
                                log_level=log_level)
    try:
        asyncio.run(serve(listen, data_dir, database_url, superlink_host, telemetry.writer, metrics_listen,
                          superlink_bind, stop_runs_on_exit, security=security, spare_superlink=spare_superlink,
                          kubernetes=kubernetes, liveness=liveness, warm_apps=warm_apps,
                          database_threads=database_threads, superlink_state_on_disk=superlink_state_on_disk))
    finally:
        telemetry.close()


def main() -> None:
    """Console entry point."""
    typer.run(run)


if __name__ == "__main__":
    main()
