"""AgentService: device agents register, then hold a session (heartbeats, reports, commands)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any

import grpc
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from fedops_common.convert import struct_to_dict, utcnow
from fedops_common.logging import get_logger
from fedops_common.proto import access_pb2, agent_pb2, agent_pb2_grpc, common_pb2
from fedops_control import metrics
from fedops_control.access.interceptor import AccessControl
from fedops_control.access.tokens import Identity
from fedops_control.agents.sessions import AgentSessions
from fedops_control.clients.labels import LabelSource, apply_agent_labels, set_labels, validated
from fedops_control.errors import (
    InvalidArgument,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
)
from fedops_control.run.manager import RunManager
from fedops_control.run.preflight import Preflight
from fedops_control.server.errors import grpc_errors
from fedops_control.state.db import DatabaseWriter
from fedops_control.state.models import (
    ClientRow,
    DataStatusRow,
    MembershipRow,
    RunRow,
    TaskRow,
)

log = get_logger(__name__)
S = common_pb2
DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
MAX_MODEL_BYTES = 2 * 1024**3
METRICS_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]{1,253}):[0-9]{1,5}$")
MAX_DATA_STATUS_BYTES = 256 * 1024
MAX_PUBLIC_KEY_CHARS = 1024
SSH_PUBLIC_KEY = re.compile(r"^ecdsa-sha2-nistp(256|384|521) [A-Za-z0-9+/=]+( \S*)?$")


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

    @staticmethod
    def _check_certificate(context, device_id: str) -> None:
        """With mutual TLS, the client certificate's common name must be the device id."""
        names = context.auth_context().get("x509_common_name") if context.auth_context() else None
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
        facts = {f.name: getattr(device, f.name) for f in device.DESCRIPTOR.fields}
        identity = self._access.identity(context)
        secure = self._access.enabled
        if secure:
            self._check_certificate(context, device.device_id)
            if identity is not None and identity.subject != client_id:
                raise PermissionDenied(f"device.device_id: this credential belongs to client {identity.subject}")
        remaining = context.time_remaining()
        expires = time.monotonic() + remaining if remaining is not None else None
        credential, task_ids = await self._write(self._register, request, client_id, facts, identity, secure, expires)
        self._agents.seen(client_id)
        log.info("agent registered", client_id=client_id, hostname=device.hostname)
        return agent_pb2.RegisterResponse(client_id=client_id,
                                          heartbeat_interval_s=self._agents.settings.heartbeat_interval_s,
                                          credential=credential, task_ids=task_ids)

    def _register(self, request: agent_pb2.RegisterRequest, client_id: str, facts: dict[str, Any],
                  identity: Identity | None, secure: bool, expires: float | None) -> tuple[str, list[str]]:
        """Register's transaction (on the database thread): tokens, credential, client row, memberships.

        A registration whose caller gave up while it waited for the database thread is dropped: in a
        reconnect storm of 5,000 agents, 8,855 registrations passed their 10 s deadline, and doing
        each one anyway only delayed the agents' retries further (bench/README.md)."""
        if expires is not None and time.monotonic() > expires:
            raise Overloaded("the registration waited past its deadline; retry (with backoff)")
        credential = ""
        device = request.device
        with self._sessions.begin() as db:
            token_tasks, retries, token_names = [], [], []
            token_labels: dict[str, str] = {}
            for secret in request.enrolment_tokens:
                token, retry = self._access.tokens.redeem_enrolment(db, secret, client_id)
                if token is None:
                    raise Unauthenticated("enrolment_tokens: unknown, already used, expired or revoked")
                if db.get(TaskRow, token.subject) is None:
                    raise InvalidArgument("enrolment_tokens", f"the task {token.subject} of a token no longer exists")
                token_tasks.append(token.subject)
                retries.append(retry)
                token_labels.update(token.labels or {})
                token_names += [token.name] if token.name else []
            for task_id in request.task_ids:
                if db.get(TaskRow, task_id) is None:
                    raise InvalidArgument("task_ids", f"unknown task {task_id!r}")
            row = db.get(ClientRow, client_id)
            # A new device has no credential and no memberships yet: three queries fewer per enrolment
            # (its credential and client row are written in one transaction, so never one without the other).
            if secure and identity is None:
                if not token_tasks:
                    raise Unauthenticated("present the agent credential (authorization) or an enrolment token")
                if row is not None and self._access.tokens.has_agent_credential(db, client_id):
                    if not all(retries):
                        raise PermissionDenied(f"device.device_id: client {client_id} is enrolled already; present "
                                               "its credential (an admin can revoke it to re-enrol the device)")
                    # This device redeemed these tokens moments ago, and the response carrying its
                    # credential never arrived: the credential it may not hold is replaced.
                    self._access.tokens.revoke_agent_credentials(db, client_id)
                credential, _ = self._access.tokens.issue(
                    access_pb2.TOKEN_KIND_AGENT, access_pb2.ROLE_AGENT,
                    (row.name if row is not None else "") or next(iter(token_names), "") or device.hostname
                    or device.device_id, subject=client_id, created_by="enrolment token", db=db)
            enrolled = {m.task_id for m in db.query(MembershipRow).filter(
                MembershipRow.client_id == client_id, MembershipRow.enrolled.is_(True))} if row is not None else set()
            if secure:
                for task_id in request.task_ids:
                    if task_id not in enrolled and task_id not in token_tasks:
                        raise PermissionDenied(f"task_ids: client {client_id} is not enrolled in {task_id}; "
                                               "enrol with an enrolment token for that task")
            new = row is None
            if row is None:
                row = ClientRow(id=client_id, device=facts, state=S.CLIENT_STATE_ONLINE)
                db.add(row)
            # Only what changed is written: re-registering after a control-service restart, a whole fleet
            # at once, is then reads only. The last heartbeat is liveness (agents/liveness.py).
            for name, value in (("device", facts), ("data_path", request.data_path),
                                ("metrics_address", request.metrics_address),
                                ("supernode_public_key", request.supernode_public_key)):
                if getattr(row, name) != value:
                    setattr(row, name, value)
            if new:
                row.last_heartbeat = utcnow()
            if not row.name and token_names:  # the name given at enrolment: the first named token's
                row.name = token_names[0]
            if row.state in (S.CLIENT_STATE_OFFLINE, S.CLIENT_STATE_UNSPECIFIED):
                row.state, row.state_reason = S.CLIENT_STATE_ONLINE, "registered"
            db.flush()
            # Labels: the agent's config (when it changed), then the enrolment tokens' (the operator who
            # made the token has the last word at enrolment). See fedops_control/clients/labels.py.
            apply_agent_labels(db, row, dict(request.labels))
            if token_labels and not all(retries):
                set_labels(db, client_id, token_labels, LabelSource.ENROLMENT)
            for task_id in {*request.task_ids, *token_tasks}:
                member = None if new else db.get(MembershipRow, (task_id, client_id))
                if member is None:
                    db.add(MembershipRow(task_id=task_id, client_id=client_id, enrolled=True, selected=False))
                else:
                    member.enrolled = True
            return credential, sorted(enrolled | set(request.task_ids) | set(token_tasks))

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
        if not await self._write(self._session_opened, client_id, first):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"client {client_id} is not registered")
        queue = self._agents.open(client_id)
        if not first.HasField("status"):  # a first status was written with the check above
            await self._apply(client_id, first)
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

    def _session_opened(self, client_id: str, first: agent_pb2.AgentMessage) -> bool:
        """Whether the client is registered; in the same transaction, the session's first status (what
        the agent sends first), or else a client marked offline is online again (it holds a session)."""
        with self._sessions.begin() as db:
            row = db.get(ClientRow, client_id)
            if row is None:
                return False
            if first.HasField("status"):
                self._apply_status(db, row, first.status)
            elif row.state in (S.CLIENT_STATE_OFFLINE, S.CLIENT_STATE_UNSPECIFIED):
                row.state, row.state_reason = S.CLIENT_STATE_ONLINE, "session opened"
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
            await self._write(self._store, client_id, message)
        elif body == "training":
            await self._runs.on_training_report(client_id, message.training)
        elif body == "notice":
            await self._runs.on_run_notice(client_id, message.notice)

    def _store(self, client_id: str, message: agent_pb2.AgentMessage) -> None:
        """A status change or a data status report (on the database thread)."""
        now = utcnow()
        with self._sessions.begin() as db:
            if message.HasField("data_status"):
                report = message.data_status
                if report.ByteSize() <= MAX_DATA_STATUS_BYTES:  # larger reports are dropped, not stored
                    db.add(DataStatusRow(client_id=client_id, run_id=report.run_id[:64], round=max(report.round, 0),
                                         reported_at=now, summary=struct_to_dict(report.summary)))
                else:
                    log.warning("data status report too large; dropped", client_id=client_id, size=report.ByteSize())
                return
            self._apply_status(db, db.get_one(ClientRow, client_id), message.status)  # Session() checked it exists

    @staticmethod
    def _apply_status(db: DbSession, row: ClientRow, status: agent_pb2.StatusChange) -> None:
        row.state, row.state_reason = status.state, status.reason
        if status.state == S.CLIENT_STATE_TRAINING:
            row.current_run_id = status.run_id
            if status.node_id:
                run = db.get(RunRow, status.run_id)
                if run is not None and row.id in run.client_ids:
                    run.node_clients = {**run.node_clients, str(status.node_id): row.id}
        elif status.run_id and row.current_run_id == status.run_id:
            row.current_run_id = ""  # the agent is done with that run
