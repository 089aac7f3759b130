"""`fedops-agent`: registers the device, keeps a session with the control service, runs SuperNodes.

Configuration comes from a TOML file (``--config``) and flags; flags win.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import tomllib
from pathlib import Path
from typing import Annotated, Any

import grpc
import psutil
import typer
from google.protobuf import struct_pb2
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from fedops_agent.datastatus import compute_data_status
from fedops_agent.device import device_info, stable_device_id
from fedops_agent.resources import ResourceSampler, TrainingTags
from fedops_agent.supernode import SuperNodeProcess, start_supernode, stop_supernode, wait_exit
from fedops_common.grpc_channel import control_aio_channel
from fedops_common.logging import bind_ids, get_logger
from fedops_common.proto import agent_pb2, agent_pb2_grpc, common_pb2
from fedops_common.telemetry.actor import ENV_ELASTICSEARCH_URL, Telemetry, start_telemetry
from fedops_common.telemetry.metrics_http import serve_metrics

log = get_logger(__name__)
S = common_pb2
# flower-supernode logs its node id once registered with the SuperLink.
NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")
SESSION_UP = Gauge("fedops_agent_session_connected", "1 while the agent holds a session with the control service")
SUPERNODES = Gauge("fedops_agent_supernodes_running", "SuperNodes this agent supervises now")
SESSIONS = Counter("fedops_agent_sessions_opened", "Sessions opened with the control service (reconnects included)")
DATA_REPORTS = Counter("fedops_agent_data_status_reports", "Data status reports sent")


class Agent:
    """One device agent."""

    def __init__(self, control: str, task_ids: list[str], data_path: str, state_dir: Path, device_id: str,
                 telemetry: Telemetry | None = None, sampler: ResourceSampler | None = None,
                 metrics_address: str = "") -> None:
        self.control = control
        self.telemetry = telemetry
        self.sampler = sampler
        self.metrics_address = metrics_address
        self.task_ids = task_ids
        self.data_path = data_path
        self.state_dir = state_dir
        self.device_id = stable_device_id(state_dir, device_id)
        self.client_id = ""
        self.heartbeat_s = 2.0
        self.nodes: dict[str, SuperNodeProcess] = {}
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()

    def _send(self, **body: Any) -> None:
        self._outbox.put_nowait(agent_pb2.AgentMessage(client_id=self.client_id, **body))

    def _status(self, state: int, reason: str, run_id: str = "") -> None:
        log.info("client state", state=S.ClientState.Name(state), reason=reason, run_id=run_id or None)
        self._send(status=agent_pb2.StatusChange(state=state, reason=reason, run_id=run_id))

    async def run_forever(self) -> None:
        """Register and hold a session; reconnect with exponential backoff after any failure."""
        async for attempt in AsyncRetrying(retry=retry_if_exception_type((grpc.RpcError, OSError)),
                                           wait=wait_exponential(multiplier=0.5, max=15)):
            with attempt:
                await self._session()

    async def _session(self) -> None:
        async with control_aio_channel(self.control) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            response = await stub.Register(agent_pb2.RegisterRequest(
                device=device_info(self.device_id), task_ids=self.task_ids, data_path=self.data_path,
                metrics_address=self.metrics_address), timeout=10)
            self.client_id, self.heartbeat_s = response.client_id, float(response.heartbeat_interval_s or 2)
            bind_ids(client_id=self.client_id)
            if self.telemetry is not None:
                self.telemetry.writer.base["fedops.client.id"] = self.client_id
            if self.sampler is not None:
                self.sampler.client_id = self.client_id
            log.info("registered", device_id=self.device_id, tasks=self.task_ids)
            partial = self.state_dir / "client-id.tmp"  # readers never see a half-written id
            partial.write_text(self.client_id, encoding="utf-8")
            partial.replace(self.state_dir / "client-id")
            self._outbox = asyncio.Queue()
            active = next(iter(self.nodes), "")
            if active:
                self._status(S.CLIENT_STATE_TRAINING, "reconnected while training", active)
            else:
                self._status(S.CLIENT_STATE_ONLINE, "session opened")
            asyncio.create_task(self._report_data_status("", 0))
            SESSIONS.inc()
            SESSION_UP.set(1)

            async def outgoing():  # type: ignore[no-untyped-def]
                while True:
                    yield await self._outbox.get()

            heartbeat = asyncio.create_task(self._heartbeats())
            call = stub.Session(outgoing())
            try:
                async for command in call:
                    await self._handle(command)
            finally:
                SESSION_UP.set(0)
                heartbeat.cancel()
                call.cancel()
            raise OSError("session closed by the control service")

    async def _heartbeats(self) -> None:
        psutil.cpu_percent(None)
        while True:
            self._send(heartbeat=agent_pb2.Heartbeat(cpu_percent=psutil.cpu_percent(None),
                                                     memory_percent=psutil.virtual_memory().percent))
            await asyncio.sleep(self.heartbeat_s)

    async def _report_data_status(self, run_id: str, round_number: int) -> None:
        """Compute the data status (aggregates only) and send it to control and telemetry."""
        summary = await asyncio.to_thread(compute_data_status, self.data_path)
        if self.telemetry is not None:
            self.telemetry.writer.write("data-status", {"fedops.run.id": run_id, "fedops.round": round_number,
                                                        "message": f"data status: {summary['sample_count']} samples",
                                                        "data": summary})
        payload = struct_pb2.Struct()
        payload.update(json.loads(json.dumps(summary)))
        self._send(data_status=agent_pb2.DataStatusReport(run_id=run_id, round=round_number, summary=payload))
        DATA_REPORTS.inc()
        log.info("data status reported", run_id=run_id or None, round=round_number or None,
                 sample_count=summary["sample_count"])

    async def _handle(self, command: agent_pb2.AgentCommand) -> None:
        body = command.WhichOneof("body")
        if body == "round_started":
            notice = command.round_started
            if self.sampler is not None:
                self.sampler.retag(TrainingTags(notice.run_id, notice.round, notice.model_version, notice.model_id))
            bind_ids(run_id=notice.run_id, round=notice.round)
            log.info("round started", run_id=notice.run_id, round=notice.round, model_version=notice.model_version)
            asyncio.create_task(self._report_data_status(notice.run_id, notice.round))
        elif body == "start_training":
            start = command.start_training
            if start.run_id in self.nodes:
                return
            node_config = dict(start.node_config)
            node_config.setdefault("data-path", json.dumps(self.data_path))
            node_config["fedops-client-id"] = json.dumps(self.client_id)
            node_config["fedops-control-address"] = json.dumps(self.control)
            workdir = self.state_dir / "runs" / start.run_id
            node = start_supernode(start.run_id, start.superlink_address, node_config, workdir)
            self.nodes[start.run_id] = node
            SUPERNODES.set(len(self.nodes))
            if self.sampler is not None:
                self.sampler.retag(TrainingTags(run_id=start.run_id))
            self._status(S.CLIENT_STATE_TRAINING, f"SuperNode started for run {start.run_id}", start.run_id)
            asyncio.create_task(self._supervise(node))
            asyncio.create_task(self._report_node_id(node, workdir / "supernode.log"))
        elif body == "stop_training":
            node = self.nodes.get(command.stop_training.run_id)
            if node is not None:
                await asyncio.to_thread(stop_supernode, node, command.stop_training.hard)

    async def _report_node_id(self, node: SuperNodeProcess, log_path: Path, timeout_s: float = 120) -> None:
        """Tell the control service our Flower node id as soon as the SuperNode logs it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and node.process.poll() is None:
            match = NODE_ID_LINE.search(log_path.read_text(errors="replace")) if log_path.exists() else None
            if match:
                self._send(status=agent_pb2.StatusChange(
                    state=S.CLIENT_STATE_TRAINING, reason=f"SuperNode connected as node {match.group(1)}",
                    run_id=node.run_id, node_id=int(match.group(1))))
                return
            await asyncio.sleep(0.2)

    async def _supervise(self, node: SuperNodeProcess) -> None:
        code = await wait_exit(node)
        self.nodes.pop(node.run_id, None)
        SUPERNODES.set(len(self.nodes))
        if self.sampler is not None and self.sampler.tags.run_id == node.run_id:
            self.sampler.retag(TrainingTags())
        if node.stop_requested:
            self._send(training=agent_pb2.TrainingReport(run_id=node.run_id, succeeded=True, exit_code=code))
            self._status(S.CLIENT_STATE_FINISHED, f"run {node.run_id} finished", node.run_id)
        else:
            reason = f"SuperNode exited unexpectedly with code {code}"
            self._send(training=agent_pb2.TrainingReport(run_id=node.run_id, succeeded=False, reason=reason,
                                                         exit_code=code))
            self._status(S.CLIENT_STATE_FAILED, reason, node.run_id)

    def shutdown(self) -> None:
        """Stop every SuperNode this agent started."""
        for node in list(self.nodes.values()):
            stop_supernode(node, hard=False)


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise typer.BadParameter(f"cannot read config {path}: {err}", param_hint="--config") from None


def run(
    config: Annotated[Path | None, typer.Option(help="TOML file with control, tasks, data_path, state_dir, device_id")] = None,
    control: Annotated[str | None, typer.Option(help="control service host:port")] = None,
    task: Annotated[list[str] | None, typer.Option(help="task id to enrol in (repeatable)")] = None,
    data_path: Annotated[str | None, typer.Option(help="private local data path (never leaves the device)")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="agent state and SuperNode work dirs")] = None,
    device_id: Annotated[str | None, typer.Option(help="override the stable device id")] = None,
    elasticsearch_url: Annotated[str | None, typer.Option(
        envvar=ENV_ELASTICSEARCH_URL, help="ship logs, data status and resource samples here")] = None,
    metrics_listen: Annotated[str | None, typer.Option(help="host:port of /metrics (port 0: any free port)")] = None,
    metrics_advertise: Annotated[str | None, typer.Option(
        help="host:port Prometheus reaches /metrics at, when not the listen address (containers, NAT)")] = None,
    sample_interval: Annotated[float | None, typer.Option(help="seconds between resource samples")] = None,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start the FedOps device agent."""
    file_cfg = _load_config(config)
    state = state_dir or Path(file_cfg.get("state_dir", ".fedops/agent"))
    interval = sample_interval if sample_interval is not None else float(file_cfg.get("sample_interval", 1.0))
    if interval <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--sample-interval")
    telemetry = start_telemetry("fedops-agent", state / "telemetry",
                                elasticsearch_url=elasticsearch_url or file_cfg.get("elasticsearch_url", ""),
                                log_level=log_level)
    listen = metrics_listen or file_cfg.get("metrics_listen", "127.0.0.1:0")
    try:
        _, metrics_address = serve_metrics(listen)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(f"cannot serve metrics on {listen!r}: {err}", param_hint="--metrics-listen") from None
    metrics_address = metrics_advertise or file_cfg.get("metrics_advertise", "") or metrics_address
    sampler = ResourceSampler(telemetry.writer, state, interval).start()
    agent = Agent(
        control=control or file_cfg.get("control", "127.0.0.1:50051"),
        task_ids=list(task or file_cfg.get("tasks", [])),
        data_path=data_path if data_path is not None else str(file_cfg.get("data_path", "")),
        state_dir=state, device_id=device_id or file_cfg.get("device_id", ""),
        telemetry=telemetry, sampler=sampler, metrics_address=metrics_address)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        runner = asyncio.create_task(agent.run_forever())
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, runner.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    try:
        asyncio.run(main())
    finally:
        agent.shutdown()
        sampler.stop()
        telemetry.close()


def main() -> None:
    """Console entry point."""
    typer.run(run)


if __name__ == "__main__":
    main()
