"""`fedops-agent`: registers the device, keeps a session with the control service, runs SuperNodes.

Configuration comes from a TOML file (``--config``) and flags; flags win.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf import struct_pb2
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from fedops_agent import preflight
from fedops_agent.datastatus import compute_data_status
from fedops_agent.device import device_info, stable_device_id
from fedops_agent.identity import (
    CREDENTIAL_FILE,
    load_credential,
    save_credential,
    supernode_keypair,
)
from fedops_agent.resources import ResourceSampler, TrainingTags
from fedops_agent.spares import DEFAULT_CAPACITY, Spares
from fedops_agent.spares import stop as stop_spare
from fedops_agent.supernode import (
    SuperNodeProcess,
    start_supernode,
    stop_supernode,
    wait_exit,
)
from fedops_agent.warmapps import learned_file, learned_path, task_of, watch_fallback
from fedops_common import runconfig as keys
from fedops_common.frameworks import framework_imports, training_imports
from fedops_common.grpc_channel import control_aio_channel
from fedops_common.logging import bind_ids, get_logger
from fedops_common.proto import agent_pb2, agent_pb2_grpc, common_pb2
from fedops_common.security import ChannelSecurity, token_digest
from fedops_common.telemetry.actor import (
    Telemetry,
)

log = get_logger(__name__)
S = common_pb2
# flower-supernode logs its node id once registered with the SuperLink.
NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")
SESSION_UP = Gauge("fedops_agent_session_connected", "1 while the agent holds a session with the control service")
SUPERNODES = Gauge("fedops_agent_supernodes_running", "SuperNodes this agent supervises now")
SESSIONS = Counter("fedops_agent_sessions_opened", "Sessions opened with the control service (reconnects included)")
DATA_REPORTS = Counter("fedops_agent_data_status_reports", "Data status reports sent")
SUPERNODE_RESTARTS = Counter("fedops_agent_supernode_restarts", "SuperNodes restarted after failing (retry policy)")
# Flower keeps a crashed node "online" for 2 heartbeat intervals (2 x 30 s): a restarted SuperNode
# is refused activation until then.
ACTIVATION_REFUSED = "Failed to activate SuperNode"
NODE_RELEASE_WAIT_S = 90.0
# Reconnect after a failed registration or a lost session: "full jitter" (a random wait up to 0.5 s,
# 1 s, 2 s... at most 15 s), so a fleet that lost its control service does not come back in lockstep.
# bench/fleet_load.py uses this same wait for its reconnect storm (bench/README.md).
RECONNECT_WAIT = wait_random_exponential(multiplier=0.5, max=15)
USED_TOKENS_FILE = "used-enrolment-tokens"  # hashes of tokens already redeemed: never sent twice


def restart_delay(policy: agent_pb2.RetryPolicy, restarts: int) -> float:
    """Seconds before restarting a failed SuperNode that was restarted ``restarts`` times already:
    the task's initial backoff, doubling, at most ``backoff_max_s`` (30 s when unset)."""
    return float(min(policy.backoff_initial_s * 2 ** restarts, policy.backoff_max_s or 30.0))


async def template_imports(requirements: Iterable[str]) -> list[str]:
    """What a warm template imports for an app with these declared dependencies."""
    return training_imports(await asyncio.to_thread(framework_imports, list(requirements)))


class Agent:
    """One device agent."""

    def __init__(self, control: str, task_ids: list[str], data_path: str, state_dir: Path, device_id: str,
                 telemetry: Telemetry | None = None, sampler: ResourceSampler | None = None,
                 metrics_address: str = "", enrolment_tokens: list[str] | None = None,
                 security: ChannelSecurity | None = None, preload_flower: bool = False,
                 warm_apps: bool = False, labels: dict[str, str] | None = None,
                 warm_spares: int = DEFAULT_CAPACITY) -> None:
        self.control = control
        self.labels = dict(labels or {})  # sent at every registration; the service applies changes only
        self.preload_flower = preload_flower  # SuperNodes are forks of the fork server (forkserver.warm())
        self.warm_apps = warm_apps and preload_flower  # ClientApps forked from a template (fedops_flower.warmapps)
        self.enrolment_tokens = list(enrolment_tokens or [])
        self.security = security or ChannelSecurity()
        self.supernode_key, self.supernode_public_key = supernode_keypair(state_dir)
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
        self._starts: dict[str, agent_pb2.StartTraining] = {}
        # The import names of the app's declared dependencies by run, from its preflight: what a warm
        # template imports.
        self._frameworks: dict[str, list[str]] = {}
        # The same by task (its last run, or the control service's PrepareTask): what its spare imports.
        self._task_frameworks: dict[str, list[str]] = {}
        self.spares = Spares(state_dir / "warm-spares", warm_spares) if self.warm_apps and warm_spares > 0 else None
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()

    def _send(self, **body: Any) -> None:
        self._outbox.put_nowait(agent_pb2.AgentMessage(client_id=self.client_id, **body))

    def _status(self, state: common_pb2.ClientState.ValueType, reason: str, run_id: str = "") -> None:
        log.info("client state", state=S.ClientState.Name(state), reason=reason, run_id=run_id or None)
        self._send(status=agent_pb2.StatusChange(state=state, reason=reason, run_id=run_id))

    async def run_forever(self) -> None:
        """Register and hold a session; reconnect with exponential backoff after any failure."""
        async for attempt in AsyncRetrying(retry=retry_if_exception_type((grpc.RpcError, OSError)),
                                           wait=RECONNECT_WAIT):
            with attempt:
                await self._session()

    def _pending_tokens(self) -> list[str]:
        used_file = self.state_dir / USED_TOKENS_FILE
        used = set(used_file.read_text(encoding="utf-8").split()) if used_file.exists() else set()
        return [token for token in self.enrolment_tokens if token_digest(token) not in used]

    def _mark_used(self, tokens: list[str]) -> None:
        with open(self.state_dir / USED_TOKENS_FILE, "a", encoding="utf-8") as out:
            out.writelines(token_digest(token) + "\n" for token in tokens)

    def _channel_security(self) -> ChannelSecurity:
        """TLS settings plus this agent's credential (none before its first enrolment)."""
        return dataclasses.replace(self.security, token=load_credential(self.state_dir))

    async def _register(self) -> agent_pb2.RegisterResponse:
        """Register; on first enrolment keep the credential the control service issues."""
        tokens = self._pending_tokens()
        async with control_aio_channel(self.control, self._channel_security()) as channel:
            response = await agent_pb2_grpc.AgentServiceStub(channel).Register(agent_pb2.RegisterRequest(
                device=device_info(self.device_id), task_ids=self.task_ids, data_path=self.data_path,
                metrics_address=self.metrics_address, enrolment_tokens=tokens,
                supernode_public_key=self.supernode_public_key, labels=self.labels), timeout=10)
        if response.credential:
            save_credential(self.state_dir, response.credential)
            log.info("enrolled: credential stored", tasks=list(response.task_ids))
        if tokens:
            self._mark_used(tokens)
        return response

    async def _session(self) -> None:
        try:
            response = await self._register()
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                log.error("registration refused", code=err.code().name, reason=err.details())
            raise
        async with control_aio_channel(self.control, self._channel_security()) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            self.client_id, self.heartbeat_s = response.client_id, float(response.heartbeat_interval_s or 2)
            bind_ids(client_id=self.client_id)
            if self.telemetry is not None:
                self.telemetry.writer.base["fedops.client.id"] = self.client_id
            if self.sampler is not None:
                self.sampler.client_id = self.client_id
            log.info("registered", device_id=self.device_id, tasks=list(response.task_ids) or self.task_ids)
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

            async def outgoing():
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
            node = self.nodes.get(start.run_id)
            if node is not None and start.launch <= node.launch:
                return
            if node is not None:  # the run was launched again on a new SuperLink: leave the lost one
                log.info("run launched again: replacing its SuperNode", run_id=start.run_id, launch=start.launch)
                node.replaced = True
                self.nodes.pop(start.run_id)
                await asyncio.to_thread(stop_supernode, node, True)
            self._starts[start.run_id] = start
            self._launch(start)
            self._status(S.CLIENT_STATE_TRAINING, f"SuperNode started for run {start.run_id}", start.run_id)
        elif body == "stop_training":
            node = self.nodes.get(command.stop_training.run_id)
            self._starts.pop(command.stop_training.run_id, None)  # no restart after a stop
            self._frameworks.pop(command.stop_training.run_id, None)
            if node is not None:
                await asyncio.to_thread(stop_supernode, node, command.stop_training.hard)
        elif body == "prepare_task":
            if self.spares is not None:
                prepare = command.prepare_task
                self._task_frameworks[prepare.task_id] = await template_imports(prepare.requirements)
                self._prepare_spare(prepare.task_id)
        elif body == "preflight":
            request = command.preflight  # answered in order, before any start_training that follows it
            if self.warm_apps:  # only a warm template imports them
                self._frameworks[request.run_id] = await template_imports(request.requirements)
            problems = await asyncio.to_thread(preflight.check, list(request.requirements), self.data_path,
                                               request.check_data_path)
            self._send(preflight=agent_pb2.PreflightResult(preflight_id=request.preflight_id, problems=problems))

    def _node_log(self, node: SuperNodeProcess) -> str:
        """What this SuperNode process (not an earlier one of the run) wrote to the run's log."""
        path = self.state_dir / "runs" / node.run_id / "supernode.log"
        return path.read_bytes()[node.log_offset:].decode(errors="replace") if path.exists() else ""

    def _launch(self, start: agent_pb2.StartTraining, restarts: int = 0, crashed_at: float = 0.0) -> SuperNodeProcess:
        """Start (or restart) the SuperNode of a run and watch it."""
        workdir = self.state_dir / "runs" / start.run_id
        workdir.mkdir(parents=True, exist_ok=True)
        node_config = dict(start.node_config)
        node_config.setdefault("data-path", json.dumps(self.data_path))
        node_config[keys.NODE_CLIENT_ID] = json.dumps(self.client_id)
        node_config[keys.CONTROL_ADDRESS] = json.dumps(self.control)
        # The ClientApp reports to the control service as this agent, over the same TLS settings.
        absolute: dict[str, Path | str] = {
                    keys.CREDENTIAL_FILE: self.state_dir / CREDENTIAL_FILE, keys.TLS_CA_FILE: self.security.ca_file,
                    keys.TLS_CERT_FILE: self.security.cert_file, keys.TLS_KEY_FILE: self.security.key_file}
        for key, path in absolute.items():
            node_config[key] = json.dumps(str(Path(path).resolve()) if path and Path(path).exists() else "")
        root_certificates = None
        if start.superlink_root_certificates:
            root_certificates = workdir / "superlink-ca.pem"
            root_certificates.write_bytes(start.superlink_root_certificates)
        warm, task_id = self.warm_apps and keys.warm_apps_wanted(start.node_config), task_of(start.node_config)
        frameworks = self._frameworks.get(start.run_id, [])
        if warm and task_id:
            self._task_frameworks[task_id] = frameworks  # what the spare for its next run imports
        spare = self.spares.take(task_id, frameworks) if warm and self.spares is not None else None
        node = start_supernode(start.run_id, start.superlink_address, node_config, workdir,
                               root_certificates=root_certificates, auth_key=self.supernode_key,
                               forked=self.preload_flower, warm_apps=warm, warm_imports=frameworks,
                               warm_learned=learned_file(self.state_dir, start.node_config), warm_spare=spare)
        node.restarts, node.crashed_at, node.launch, node.task_id = restarts, crashed_at, start.launch, task_id
        self.nodes[start.run_id] = node
        SUPERNODES.set(len(self.nodes))
        if self.sampler is not None:
            self.sampler.retag(TrainingTags(run_id=start.run_id))
        asyncio.create_task(self._supervise(node))
        asyncio.create_task(self._report_node_id(node))
        asyncio.create_task(watch_fallback(node, lambda: self._node_log(node), self._status,
                                           lambda notice: self._send(notice=notice)))
        return node

    async def _report_node_id(self, node: SuperNodeProcess, timeout_s: float = 120) -> None:
        """Tell the control service our Flower node id as soon as the SuperNode logs it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and node.process.poll() is None:
            match = NODE_ID_LINE.search(self._node_log(node))
            if match:
                self._send(status=agent_pb2.StatusChange(
                    state=S.CLIENT_STATE_TRAINING, reason=f"SuperNode connected as node {match.group(1)}",
                    run_id=node.run_id, node_id=int(match.group(1))))
                return
            await asyncio.sleep(0.2)

    def _prepare_spare(self, task_id: str) -> None:
        """A spare template for the task's next run (fedops_agent/spares.py), when its frameworks are known."""
        if self.spares is not None and task_id in self._task_frameworks:
            self.spares.prepare(task_id, self._task_frameworks[task_id], learned_path(self.state_dir, task_id))

    async def _supervise(self, node: SuperNodeProcess) -> None:
        code = await wait_exit(node)
        if self.nodes.get(node.run_id) is node:
            self.nodes.pop(node.run_id)
        SUPERNODES.set(len(self.nodes))
        if node.spare is not None:  # the run's template and its tasks end with its SuperNode
            await asyncio.to_thread(stop_spare, node.spare)
        if node.replaced:
            return
        if self.sampler is not None and self.sampler.tags.run_id == node.run_id:
            self.sampler.retag(TrainingTags())
        if node.stop_requested:
            self._starts.pop(node.run_id, None)
            self._send(training=agent_pb2.TrainingReport(run_id=node.run_id, succeeded=True, exit_code=code))
            self._status(S.CLIENT_STATE_FINISHED, f"run {node.run_id} finished", node.run_id)
            self._prepare_spare(node.task_id)  # for the task's next run
            return
        reason = f"SuperNode exited unexpectedly with code {code}"
        start = self._starts.get(node.run_id)
        loop = asyncio.get_running_loop()
        if start is not None and node.crashed_at and loop.time() - node.crashed_at < NODE_RELEASE_WAIT_S and \
                ACTIVATION_REFUSED in self._node_log(node):
            # The SuperLink still counts the crashed node as online (until its heartbeats lapse):
            # try to rejoin again shortly, without spending the retry budget.
            await asyncio.sleep(5.0)
            if self._starts.get(node.run_id) is start and node.run_id not in self.nodes:
                self._launch(start, restarts=node.restarts, crashed_at=node.crashed_at)
                return
        if start is not None and node.restarts < start.retry.max_restarts:
            # Retry policy of the task: exponential backoff, then the same SuperNode identity rejoins.
            delay = restart_delay(start.retry, node.restarts)
            attempt = node.restarts + 1
            self._status(S.CLIENT_STATE_FAILED, f"{reason}; restart {attempt}/{start.retry.max_restarts} "
                                                f"in {delay:.1f}s", node.run_id)
            await asyncio.sleep(delay)
            if self._starts.get(node.run_id) is start and node.run_id not in self.nodes:
                SUPERNODE_RESTARTS.inc()
                self._launch(start, restarts=attempt, crashed_at=loop.time())
                self._status(S.CLIENT_STATE_TRAINING, f"SuperNode restarted for run {node.run_id} "
                                                      f"(attempt {attempt})", node.run_id)
                return
        self._starts.pop(node.run_id, None)
        self._send(training=agent_pb2.TrainingReport(run_id=node.run_id, succeeded=False, reason=reason,
                                                     exit_code=code))
        self._status(S.CLIENT_STATE_FAILED, reason, node.run_id)
        # Not while the SuperNode is restarted (a crashed node may be refused for a minute, and each
        # try would start a spare, importing the frameworks, only to stop it): once the run is over.
        self._prepare_spare(node.task_id)

    def shutdown(self) -> None:
        """Stop every SuperNode this agent started."""
        for node in list(self.nodes.values()):
            stop_supernode(node, hard=False)
        if self.spares is not None:
            self.spares.close()
