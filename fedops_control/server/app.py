"""`fedops-control`: the control service (gRPC, with reflection and health)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedops_common.grpc_channel import CHANNEL_OPTIONS
from fedops_common.logging import configure_logging, get_logger
from fedops_common.proto import agent_pb2, agent_pb2_grpc, control_pb2, control_pb2_grpc
from fedops_control.clients.registry import AgentRegistry
from fedops_control.registry.store import ModelStore
from fedops_control.run.events import EventBus
from fedops_control.run.launcher import LocalProcessLauncher
from fedops_control.run.manager import RunManager
from fedops_control.server.agent_servicer import AgentServicer, ObserverServicer
from fedops_control.server.control_servicer import ControlServicer
from fedops_control.state.db import open_database, sqlite_url

log = get_logger(__name__)
SERVICE_NAMES = (
    control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["ObserverService"].full_name,
)


async def serve(listen: str, data_dir: Path, database_url: str, superlink_host: str,
                ready: asyncio.Event | None = None) -> None:
    """Run the control service until cancelled or signalled."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(database_url or sqlite_url(data_dir / "control.db"))
    bus = EventBus(sessions)
    agents = AgentRegistry()
    models = ModelStore(sessions, data_dir / "models")
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    port = server.add_insecure_port(listen)
    host = listen.rsplit(":", 1)[0]
    local_host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host
    runs = RunManager(sessions, bus, agents, models, LocalProcessLauncher(advertised_host=superlink_host),
                      data_dir, control_address=f"{local_host}:{port}")
    control_pb2_grpc.add_ControlServiceServicer_to_server(ControlServicer(sessions, runs, agents, models, bus), server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(sessions, agents, runs), server)
    agent_pb2_grpc.add_ObserverServiceServicer_to_server(ObserverServicer(runs, models), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("control service listening", address=f"{host}:{port}", data_dir=str(data_dir))
    print(f"fedops-control listening on {host}:{port}", flush=True)
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
        await runs.shutdown()
        await server.stop(grace=2)


def run(
    listen: Annotated[str, typer.Option(help="host:port to serve gRPC on")] = "127.0.0.1:50051",
    data_dir: Annotated[Path, typer.Option(help="state, models and run directories")] = Path(".fedops/control"),
    database_url: Annotated[str, typer.Option(help="SQLAlchemy URL; default: SQLite file in data-dir")] = "",
    superlink_host: Annotated[str, typer.Option(help="host agents use to reach run SuperLinks")] = "127.0.0.1",
    log_file: Annotated[Path | None, typer.Option(help="JSON-lines log file")] = None,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start the FedOps control service."""
    configure_logging("fedops-control", log_file or data_dir / "logs" / "control.jsonl", log_level, stream=None)
    asyncio.run(serve(listen, data_dir, database_url, superlink_host))


def main() -> None:
    """Console entry point."""
    typer.run(run)


if __name__ == "__main__":
    main()
