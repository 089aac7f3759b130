"""AgentService: device agents register, then hold a session (heartbeats, reports, commands)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any, cast

import grpc
from sqlalchemy import Connection, Engine, Table, bindparam, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from fedops_common.convert import struct_to_dict, utcnow
from fedops_common.logging import get_logger
from fedops_common.proto import agent_pb2, agent_pb2_grpc, common_pb2
from fedops_control import metrics
from fedops_control.access.interceptor import AccessControl
from fedops_control.agents.enrolment import MAX_BATCH, Registrar, Registration
from fedops_control.agents.sessions import AgentSessions
from fedops_control.clients.labels import validated
from fedops_control.errors import InvalidArgument, NotFound, PermissionDenied
from fedops_control.run.manager import RunManager
from fedops_control.run.nodenames import name_node_in_open_rounds
from fedops_control.run.preflight import Preflight
from fedops_control.server.errors import grpc_errors
from fedops_control.state.db import DatabaseWriter, GroupCommit
from fedops_control.state.models import (
    ClientRow,
    DataStatusRow,
    RunRow,
)

log = get_logger(__name__)
S = common_pb2
DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
MAX_MODEL_BYTES = 2 * 1024**3
METRICS_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]{1,253}):[0-9]{1,5}$")
MAX_DATA_STATUS_BYTES = 256 * 1024
MAX_PUBLIC_KEY_CHARS = 1024
SSH_PUBLIC_KEY = re.compile(r"^ecdsa-sha2-nistp(256|384|521) [A-Za-z0-9+/=]+( \S*)?$")
CLIENTS, RUNS = cast(Table, ClientRow.__table__), cast(Table, RunRow.__table__)  # the tables: plain statements
# Built once with bind parameters (see access/tokens.py). An UPDATE without values sets the columns its
# parameters name (other than the b_ ones of its WHERE clause).
_CLIENT_STATE = select(CLIENTS.c.state, CLIENTS.c.state_reason, CLIENTS.c.current_run_id).where(
    CLIENTS.c.id == bindparam("client_id"))
_UPDATE_CLIENT = update(CLIENTS).where(CLIENTS.c.id == bindparam("b_client_id"))
_RUN_NODES = select(RUNS.c.state, RUNS.c.client_ids, RUNS.c.node_clients).where(RUNS.c.id == bindparam("run_id"))
_RUN_STATE = select(RUNS.c.state).where(RUNS.c.id == bindparam("run_id"))
_UPDATE_RUN_NODES = update(RUNS).where(RUNS.c.id == bindparam("b_run_id"))


def client_id_for(device_id: str) -> str:
    """Stable client id derived from the device id."""
    return "client-" + hashlib.sha256(device_id.encode()).hexdigest()[:10]


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Implements fedops.v1.AgentService."""

    def __init__(self, sessions: sessionmaker[DbSession], agents: AgentSessions, runs: RunManager,
                 access: AccessControl, preflight: Preflight, write: DatabaseWriter) -> None:
        self._sessions = sessions
        self._write = write
        self._agents = agents
        self._runs = runs
        self._access = access
        self._preflight = preflight
        self._registrar = Registrar(sessions, access.tokens, write)  # Register's transaction, in groups
        self._opened: GroupCommit[tuple[str, agent_pb2.AgentMessage], bool] = GroupCommit(
            write, self._sessions_opened, MAX_BATCH, parallel=write.workers)

    @property
    def _engine(self) -> Engine:
        """The engine behind the sessions: plain statements on a connection, no ORM session."""
        engine: Engine = self._sessions.kw["bind"]
        return engine

    @staticmethod
    def _check_certificate(context, device_id: str) -> None:
        """With mutual TLS, the client certificate's common name must be the device id."""
        auth = context.auth_context()  # built anew at each call; asked twice it took 1.3 % of a storm's samples
        names = auth.get("x509_common_name") if auth else None
        if names and names[0].decode() != device_id:
            raise PermissionDenied(f"device.device_id: the client certificate belongs to {names[0].decode()!r}")

    @grpc_errors
    async def Register(self, request, context):
        device = request.device
        if not DEVICE_ID.match(device.device_id):
            raise InvalidArgument("device.device_id", "1-64 characters of letters, digits, '_.:@-'")
        if len(device.hostname) > 255 or len(request.data_path) > 4096:
            raise InvalidArgument("device.hostname", "too long")
        if request.metrics_address and not METRICS_ADDRESS.match(request.metrics_address):
            raise InvalidArgument("metrics_address", "must be host:port")
        if len(request.supernode_public_key) > MAX_PUBLIC_KEY_CHARS or (
                request.supernode_public_key and not SSH_PUBLIC_KEY.match(request.supernode_public_key)):
            raise InvalidArgument("supernode_public_key", "an OpenSSH ecdsa-sha2-nistp* public key")
        if len(request.enrolment_tokens) > 64:
            raise InvalidArgument("enrolment_tokens", "at most 64")
        validated("labels", request.labels)
        client_id = client_id_for(device.device_id)
        identity = self._access.identity(context)
        secure = self._access.enabled
        if secure:
            self._check_certificate(context, device.device_id)
            if identity is not None and identity.subject != client_id:
                raise PermissionDenied(f"device.device_id: this credential belongs to client {identity.subject}")
        remaining = context.time_remaining()
        expires = time.monotonic() + remaining if remaining is not None else None
        # A registration whose caller gives up while it waits for the database thread is dropped: in a
        # reconnect storm of 5,000 agents, 8,855 registrations passed their 10 s deadline, and doing
        # each one anyway only delayed the agents' retries further (bench/README.md).
        registered = await self._registrar.register(Registration.of(request, client_id, identity, secure, expires))
        self._agents.seen(client_id)
        log.info("agent registered", client_id=client_id, hostname=device.hostname)
        return agent_pb2.RegisterResponse(client_id=client_id,
                                          heartbeat_interval_s=self._agents.settings.heartbeat_interval_s,
                                          credential=registered.credential, task_ids=registered.task_ids)

    async def Session(self, request_iterator, context):
        """Bidirectional session; the first message names the client."""
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        client_id = first.client_id
        identity = self._access.identity(context)
        if self._access.enabled and (identity is None or identity.subject != client_id):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"client_id: this credential may not act as {client_id[:64]!r}")
        if not await self._opened((client_id, first)):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"client {client_id} is not registered")
        queue = self._agents.open(client_id)
        if not first.HasField("status"):  # a first status was written with the check above
            await self._apply(client_id, first)
        elif first.status.state == S.CLIENT_STATE_TRAINING and await self._write(self._run_over, first.status.run_id):
            # Reconnected while training a run that ended meanwhile: the stop sent then was lost
            # with the old session, and its SuperNode would otherwise wait for a SuperLink that is gone.
            self._stop_finished(client_id, first.status.run_id)
        log.info("agent session opened", client_id=client_id)

        async def read() -> None:
            async for message in request_iterator:
                await self._apply(client_id, message)

        reader = asyncio.create_task(read())
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                command = getter.result()
                if command is None:  # replaced by a newer session
                    break
                yield command
        finally:
            reader.cancel()
            if self._agents.close(client_id, queue):
                log.info("agent session closed", client_id=client_id)
                await self._runs.on_agent_lost(client_id)

    def _sessions_opened(self, batch: list[tuple[str, agent_pb2.AgentMessage]]) -> list[bool | Exception]:
        """Sessions opened while the database thread was busy, in one transaction (group commit, as for
        registrations: agents/enrolment.py): for each, whether the client is registered and, written with
        that check, the session's first status (what the agent sends first), or else a client marked
        offline is online again (it holds a session). In a reconnect storm every agent opens a session
        right after registering; one ORM transaction each took as much of the database thread as the
        registrations (py-spy, 5,000 agents: 22.7 % against 23.2 % of the service's samples)."""
        try:
            with self._engine.begin() as conn:
                return [self._session_opened(conn, client_id, first) for client_id, first in batch]
        except Exception:
            log.warning("session group rolled back; each in a transaction of its own", sessions=len(batch))
        results: list[bool | Exception] = []
        for client_id, first in batch:
            try:
                with self._engine.begin() as conn:
                    results.append(self._session_opened(conn, client_id, first))
            except Exception as err:
                results.append(err)
        return results

    @staticmethod
    def _session_opened(conn: Connection, client_id: str, first: agent_pb2.AgentMessage) -> bool:
        row = conn.execute(_CLIENT_STATE, {"client_id": client_id}).first()
        if row is None:
            return False
        if first.HasField("status"):
            _write_status(conn, client_id, row, first.status)
        elif row.state in (S.CLIENT_STATE_OFFLINE, S.CLIENT_STATE_UNSPECIFIED):
            conn.execute(_UPDATE_CLIENT, {"b_client_id": client_id, "state": S.CLIENT_STATE_ONLINE,
                                          "state_reason": "session opened"})
        return True

    async def _apply(self, client_id: str, message: agent_pb2.AgentMessage) -> None:
        """One message of a session. Liveness stays in memory (persisted in batches, see
        agents/liveness.py); state changes and reports are written at once, in the session's order."""
        self._agents.seen(client_id)
        body = message.WhichOneof("body")
        if body == "heartbeat":
            metrics.heartbeat()
        elif body == "preflight":  # answers a pending StartRun; nothing to store
            self._preflight.on_result(client_id, message.preflight)
        elif body in ("status", "data_status"):
            if not await self._write(self._store, client_id, message):
                self._stop_finished(client_id, message.status.run_id)
        elif body == "training":
            await self._runs.on_training_report(client_id, message.training)
        elif body == "notice":
            await self._runs.on_run_notice(client_id, message.notice)

    def _stop_finished(self, client_id: str, run_id: str) -> None:
        """The agent says it trains ``run_id``, which is over: tell it to stop (hard)."""
        log.info("agent trains a finished run: stopping it", client_id=client_id, run_id=run_id)
        self._agents.send(client_id, agent_pb2.AgentCommand(stop_training=agent_pb2.StopTraining(
            run_id=run_id, hard=True)))

    def _run_over(self, run_id: str) -> bool:
        """Whether ``run_id`` is finished or unknown (on the database thread)."""
        with self._engine.connect() as conn:
            state = conn.execute(_RUN_STATE, {"run_id": run_id}).scalar()
        return state is None or state == S.RUN_STATE_FINISHED

    def _store(self, client_id: str, message: agent_pb2.AgentMessage) -> bool:
        """A status change or a data status report (on the database thread); False for a status
        that says the agent trains a run that is over (:func:`_write_status`)."""
        now = utcnow()
        if message.HasField("data_status"):
            report = message.data_status
            if report.ByteSize() > MAX_DATA_STATUS_BYTES:  # larger reports are dropped, not stored
                log.warning("data status report too large; dropped", client_id=client_id, size=report.ByteSize())
                return True
            with self._sessions.begin() as db:
                db.add(DataStatusRow(client_id=client_id, run_id=report.run_id[:64], round=max(report.round, 0),
                                     reported_at=now, summary=struct_to_dict(report.summary)))
            return True
        with self._engine.begin() as conn:
            row = conn.execute(_CLIENT_STATE, {"client_id": client_id}).first()
            if row is None:  # Session() checked it exists: deleted since
                raise NotFound(f"client {client_id} is not registered")
            return _write_status(conn, client_id, row, message.status)


def _write_status(conn: Connection, client_id: str, row: Any, status: agent_pb2.StatusChange) -> bool:
    """Store a client's status change; ``row``: its current state and current_run_id. Plain statements
    (no ORM object), and no UPDATE when nothing changes. A TRAINING status of a run that is finished
    (or unknown) is not stored, and False returned: it was sent before the agent heard of the run's
    end (the SuperNode's "connected as node N" can follow the stop), and stored it left the client
    in a finished run for good."""
    changes: dict[str, Any] = {"state": status.state, "state_reason": status.reason}
    if status.state == S.CLIENT_STATE_TRAINING and status.run_id:
        run = conn.execute(_RUN_NODES, {"run_id": status.run_id}).first()
        if run is None or run.state == S.RUN_STATE_FINISHED:
            return False
        changes["current_run_id"] = status.run_id
        if status.node_id and client_id in run.client_ids:
            conn.execute(_UPDATE_RUN_NODES, {"b_run_id": status.run_id,
                                             "node_clients": {**run.node_clients, str(status.node_id): client_id}})
            name_node_in_open_rounds(conn, status.run_id, status.node_id, client_id)  # a phase may have started
    elif status.state == S.CLIENT_STATE_TRAINING:
        changes["current_run_id"] = ""
    elif status.run_id and row.current_run_id == status.run_id:
        changes["current_run_id"] = ""  # the agent is done with that run
    if any(getattr(row, name) != value for name, value in changes.items()):
        conn.execute(_UPDATE_CLIENT, {"b_client_id": client_id, **changes})
    return True
