"""`fedops-control`: the control service (gRPC, with reflection and health)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from sqlalchemy.orm import Session, sessionmaker
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedops_common.grpc_channel import CHANNEL_OPTIONS
from fedops_common.logging import get_logger
from fedops_common.telemetry import TelemetryWriter
from fedops_common.telemetry.actor import ENV_ELASTICSEARCH_URL, start_telemetry
from fedops_common.telemetry.metrics_http import serve_metrics
from fedops_common.proto import agent_pb2, agent_pb2_grpc, control_pb2, control_pb2_grpc
from fedops_control.clients.registry import AgentRegistry
from fedops_control.metrics import register_state_collector
from fedops_control.registry.store import ModelStore
from fedops_control.run.events import EventBus
from fedops_control.run.launcher import LocalProcessLauncher
from fedops_control.run.manager import RunManager
from fedops_control.server.agent_servicer import AgentServicer, ObserverServicer
from fedops_control.server.control_servicer import ControlServicer
from fedops_control.state.db import open_database, sqlite_url
from fedops_control.state.models import ClientRow

log = get_logger(__name__)
SERVICE_NAMES = (
    control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["ObserverService"].full_name,
)


def agent_targets(sessions: sessionmaker[Session], agents: AgentRegistry) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery: the /metrics endpoint of every connected agent."""
    connected = set(agents.connected())
    with sessions() as db:
        rows = db.query(ClientRow).filter(ClientRow.id.in_(connected), ClientRow.metrics_address != "").all()
        return [{"targets": [row.metrics_address],
                 "labels": {"client_id": row.id, "hostname": str(row.device.get("hostname", "")),
                            "device_id": str(row.device.get("device_id", ""))}}
                for row in sorted(rows, key=lambda r: r.id)]


async def serve(listen: str, data_dir: Path, database_url: str, superlink_host: str,
                writer: TelemetryWriter | None = None, metrics_listen: str = "", superlink_bind: str = "127.0.0.1",
                stop_runs_on_exit: bool = False, ready: asyncio.Event | None = None) -> None:
    """Run the control service until cancelled or signalled."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(database_url or sqlite_url(data_dir / "control.db"))
    bus = EventBus(sessions, writer)
    agents = AgentRegistry()
    models = ModelStore(sessions, data_dir / "models")
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    port = server.add_insecure_port(listen)
    host = listen.rsplit(":", 1)[0]
    local_host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host
    runs = RunManager(sessions, bus, agents, models, LocalProcessLauncher(bind_host=superlink_bind, advertised_host=superlink_host),
                      data_dir, control_address=f"{local_host}:{port}", writer=writer)
    control_pb2_grpc.add_ControlServiceServicer_to_server(ControlServicer(sessions, runs, agents, models, bus), server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(sessions, agents, runs), server)
    agent_pb2_grpc.add_ObserverServiceServicer_to_server(ObserverServicer(runs, models), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    await server.start()
    if metrics_listen:
        register_state_collector(sessions, agents)
        _, metrics_address = serve_metrics(metrics_listen, {"/sd/agents": lambda: agent_targets(sessions, agents)})
        log.info("metrics served", address=metrics_address)
        print(f"fedops-control metrics on http://{metrics_address}/metrics", flush=True)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("control service listening", address=f"{host}:{port}", data_dir=str(data_dir))
    print(f"fedops-control listening on {host}:{port}", flush=True)
    await runs.recover()
    watchdog = asyncio.create_task(runs.watchdog())
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        watchdog.cancel()
        await runs.shutdown(stop_runs=stop_runs_on_exit)
        await server.stop(grace=2)


def run(
    listen: Annotated[str, typer.Option(help="host:port to serve gRPC on")] = "127.0.0.1:50051",
    data_dir: Annotated[Path, typer.Option(help="state, models and run directories")] = Path(".fedops/control"),
    database_url: Annotated[str, typer.Option(help="SQLAlchemy URL; default: SQLite file in data-dir")] = "",
    superlink_host: Annotated[str, typer.Option(help="host agents use to reach run SuperLinks")] = "127.0.0.1",
    superlink_bind: Annotated[str, typer.Option(
        help="interface run SuperLinks listen on (0.0.0.0 when agents are on other hosts)")] = "127.0.0.1",
    elasticsearch_url: Annotated[str, typer.Option(
        envvar=ENV_ELASTICSEARCH_URL, help="ship logs, run events and round metrics here")] = "",
    metrics_listen: Annotated[str, typer.Option(
        help="host:port of /metrics and /sd/agents ('' = off, port 0 = any free port)")] = "127.0.0.1:9464",
    stop_runs_on_exit: Annotated[bool, typer.Option(
        help="fail and stop active runs on exit; by default they go on and are re-attached on the next start")] = False,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start the FedOps control service."""
    telemetry = start_telemetry("fedops-control", data_dir / "telemetry", elasticsearch_url=elasticsearch_url,
                                log_level=log_level)
    try:
        asyncio.run(serve(listen, data_dir, database_url, superlink_host, telemetry.writer, metrics_listen,
                          superlink_bind, stop_runs_on_exit))
    finally:
        telemetry.close()


def main() -> None:
    """Console entry point."""
    typer.run(run)


if __name__ == "__main__":
    main()
