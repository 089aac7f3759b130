"""Registration: the ``Register`` transaction as SQLAlchemy Core statements, committed in groups.

Every agent registers when it starts and after every reconnect, so a restarted service or a new
fleet means thousands of registrations at once. With one ORM transaction each (an object graph,
autoflush, ~10 statements) an enrolment cost 3.1 ms of CPU in process and the service 4.0 ms of
CPU per ``Register``: about 230 a second on its core (``bench/enrolment_cost.py``, bench/README.md).
Here a registration is plain SQL: its reads, then its writes, no ORM object; and the registrations
that arrive while the database thread is busy are committed together (:class:`GroupCommit`). Measured
the same way: 0.44 ms of CPU per enrolment in groups of 64 (0.89 ms alone, 7-8 statements instead of
10), and 1.0 ms of the service's CPU per ``Register``, about 940 a second.

What one registration does, reads first (a refused registration writes nothing):

1. each enrolment token must be valid for this device now (``TokenStore.enrolment_use``: one-time; a
   retry by the same device within ENROLMENT_RETRY_WINDOW_S is allowed, its response may have been
   lost) and its task must exist; named tasks must exist;
2. with auth on and no credential presented: an enrolment token is required; a device that is enrolled
   already (it holds an active credential) may enrol again only by retrying with the same tokens, and
   then the credential it may never have received is revoked; a new credential is issued;
3. with auth on, the tasks it names must be ones it is enrolled in or has a token for;
4. writes: the tokens marked used (a compare-and-set), the credential, the client row (only what
   changed, for a known device), its labels (the agent's, then the tokens'; see clients/labels.py)
   and its memberships.

**Group commit.** Registrations are committed in arrival order, up to MAX_BATCH in one transaction.
Each still acts alone:

- a refused registration (bad token, unknown task, another device's credential) raises before it
  writes anything, and the rest of its group goes on;
- when a write fails (on PostgreSQL: a registration of the same device or with the same token
  committed by another transaction in between) the group is rolled back and each of its
  registrations is done again in a transaction of its own, so only the conflicting one can fail; it
  is tried once more, and then sees the other's commit: the same device's retry succeeds, another
  device is refused;
- no ``Register`` is answered before its transaction has committed, so a credential an agent holds
  exists in the database. SQLite runs in WAL mode with ``synchronous=NORMAL`` (state/db.py): a
  committed registration survives a crash of the service, not necessarily a power loss.

A credential issued here is put into the token cache once committed, so the agent's session, opened
right after, is authenticated without a database lookup.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Engine, Row, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import utcnow
from fedops_common.logging import get_logger
from fedops_common.proto import agent_pb2, common_pb2
from fedops_control import metrics
from fedops_control.access.tokens import EnrolmentUse, Identity, TokenRaced, TokenStore
from fedops_control.clients.labels import LabelSource, first_labels, set_labels, update_agent_labels
from fedops_control.errors import InvalidArgument, Overloaded, PermissionDenied, Unauthenticated
from fedops_control.state.db import DatabaseWriter, GroupCommit
from fedops_control.state.models import ClientLabelRow, ClientRow, MembershipRow, TaskRow

log = get_logger(__name__)
S = common_pb2
# The tables themselves (the ORM declares them as any FromClause): statements on them carry no ORM machinery.
CLIENTS, LABELS, MEMBERSHIPS, TASKS = (cast(Table, row.__table__) for row in (ClientRow, ClientLabelRow,
                                                                                MembershipRow, TaskRow))
# Registrations per transaction. CPU per enrolment in groups of 4, 16, 64 and 256: 0.82, 0.66, 0.58 and
# 0.49 ms (bench/enrolment_cost.py --batch, one run each; ~1 ms alone). The gain flattens, and a group
# holds the database thread, which the sessions' status writes share, for its whole duration
# (64 × ~0.5 ms ≈ 30 ms).
MAX_BATCH = 64
# Statements built once with bind parameters (see access/tokens.py: rebuilding one per call was most of its cost).
_TASK = select(TASKS.c.id).where(TASKS.c.id == bindparam("task_id"))
_CLIENT = select(CLIENTS.c.name, CLIENTS.c.device, CLIENTS.c.data_path, CLIENTS.c.metrics_address,
                 CLIENTS.c.supernode_public_key, CLIENTS.c.state, CLIENTS.c.agent_labels).where(
    CLIENTS.c.id == bindparam("client_id"))
_MEMBERSHIPS = select(MEMBERSHIPS.c.task_id, MEMBERSHIPS.c.enrolled).where(
    MEMBERSHIPS.c.client_id == bindparam("client_id"))
_INSERT_CLIENT, _INSERT_LABELS, _INSERT_MEMBERSHIPS = insert(CLIENTS), insert(LABELS), insert(MEMBERSHIPS)
_ENROL_AGAIN = update(MEMBERSHIPS).where(MEMBERSHIPS.c.task_id == bindparam("b_task_id"),
                                         MEMBERSHIPS.c.client_id == bindparam("b_client_id")).values(enrolled=True)
REFUSALS = (InvalidArgument, PermissionDenied, Unauthenticated)  # raised before a registration writes
OFFLINE_STATES = (S.CLIENT_STATE_OFFLINE, S.CLIENT_STATE_UNSPECIFIED)


@dataclass(frozen=True)
class Registration:
    """One ``Register`` call, checked for form and for the caller's identity by the servicer."""

    client_id: str
    device: dict[str, Any]          # the DeviceInfo facts, as stored in clients.device
    data_path: str = ""
    metrics_address: str = ""
    supernode_public_key: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # the agent's configured labels
    enrolment_tokens: tuple[str, ...] = ()
    task_ids: tuple[str, ...] = ()
    authenticated: bool = False     # it presented this client's own credential
    secure: bool = True             # auth on
    expires: float | None = None    # time.monotonic() after which its caller has given up

    @classmethod
    def of(cls, request: agent_pb2.RegisterRequest, client_id: str, identity: Identity | None, secure: bool,
           expires: float | None = None) -> Registration:
        """The registration a request asks for (``identity``: the caller's, already checked to be this client's)."""
        device = request.device
        return cls(client_id=client_id, device={f.name: getattr(device, f.name) for f in device.DESCRIPTOR.fields},
                   data_path=request.data_path, metrics_address=request.metrics_address,
                   supernode_public_key=request.supernode_public_key, labels=dict(request.labels),
                   enrolment_tokens=tuple(request.enrolment_tokens), task_ids=tuple(request.task_ids),
                   authenticated=identity is not None, secure=secure, expires=expires)


@dataclass(frozen=True)
class Registered:
    """What the agent is told: its new credential ('' when it presented one) and the tasks it is in."""

    credential: str
    task_ids: list[str]


@dataclass
class _Plan:
    """A registration that passed its checks: what to write."""

    registration: Registration
    uses: list[EnrolmentUse]
    client: Row[*tuple[Any, ...]] | None  # the known device's row, None for a new one
    memberships: dict[str, bool]     # task id -> enrolled, of a known device
    issue: bool = False              # a new credential
    revoke: bool = False             # the known device's credential first (an enrolment retried)


class Registrar:
    """Runs registrations on the database thread, in groups (see the module's docstring)."""

    def __init__(self, sessions: sessionmaker[Session], tokens: TokenStore, write: DatabaseWriter | None = None,
                 max_batch: int = MAX_BATCH) -> None:
        self._sessions = sessions
        self._tokens = tokens
        self._group: GroupCommit[Registration, Registered] | None = (
            GroupCommit(write, self.commit, max_batch, parallel=write.workers) if write is not None else None)

    @property
    def _engine(self) -> Engine:
        engine: Engine = self._sessions.kw["bind"]
        return engine

    async def register(self, registration: Registration) -> Registered:
        """Register with the next group: the result, or the refusal raised (InvalidArgument,
        PermissionDenied, Unauthenticated; Overloaded when the caller's deadline passed first)."""
        if self._group is None:
            raise RuntimeError("this Registrar has no database writer; call commit()")
        return await self._group(registration)

    def commit(self, batch: Sequence[Registration]) -> list[Registered | Exception]:
        """Register a group in one transaction (on the database thread); one result or error per registration."""
        results: list[Registered | Exception] = []
        live: list[int] = []
        now_monotonic = time.monotonic()
        for registration in batch:
            if registration.expires is not None and now_monotonic > registration.expires:
                results.append(Overloaded("the registration waited past its deadline; retry (with backoff)"))
            else:
                results.append(Overloaded("not done"))  # replaced below
                live.append(len(results) - 1)
        issued: list[tuple[str, Identity]] = []
        revoked = False
        metrics.registration_group(len(live))
        try:
            with self._engine.begin() as conn:
                tasks: dict[str, bool] = {}
                for i in live:
                    try:
                        plan = self._check(conn, batch[i], tasks)
                    except REFUSALS as refusal:
                        results[i] = refusal
                        continue
                    results[i] = self._apply(conn, plan, issued)
                    revoked |= plan.revoke
        except Exception as err:  # a write failed: every registration of the group alone
            log.warning("registration group rolled back; each registration in a transaction of its own",
                        registrations=len(live), error=f"{type(err).__name__}: {err}"[:300])
            for i in live:
                results[i] = self._alone(batch[i])
            return results
        self._committed(issued, revoked)
        return results

    def _alone(self, registration: Registration) -> Registered | Exception:
        """One registration in its own transaction; tried twice when it lost a race to another transaction."""
        for attempt in (1, 2):
            issued: list[tuple[str, Identity]] = []
            try:
                with self._engine.begin() as conn:
                    plan = self._check(conn, registration, {})
                    result = self._apply(conn, plan, issued)
            except REFUSALS as refusal:
                return refusal
            except (TokenRaced, IntegrityError) as err:
                if attempt == 2:
                    return Unauthenticated("enrolment_tokens: used by a concurrent registration "
                                           f"({type(err).__name__})")
                continue
            except Exception as err:
                log.exception("registration failed", client_id=registration.client_id)
                return err
            self._committed(issued, plan.revoke)
            return result
        raise AssertionError("unreachable")

    def _committed(self, issued: list[tuple[str, Identity]], revoked: bool) -> None:
        """After the commit: a revocation empties the token cache; new credentials go into it."""
        if revoked:
            self._tokens.forget_resolved()  # and nothing is remembered: the cache is empty anyway
            return
        generation = self._tokens.generation
        for secret, identity in issued:
            self._tokens.remember(secret, identity, None, generation)

    @staticmethod
    def _task_exists(conn: Connection, task_id: str, known: dict[str, bool]) -> bool:
        """Whether a task exists; asked once per group (a fleet enrols into few tasks)."""
        if task_id not in known:
            known[task_id] = conn.execute(_TASK, {"task_id": task_id}).first() is not None
        return known[task_id]

    def _check(self, conn: Connection, r: Registration, tasks: dict[str, bool]) -> _Plan:
        """Reads only: the refusals, and what the registration will write."""
        cid, now = r.client_id, utcnow()
        uses = []
        for secret in r.enrolment_tokens:
            use = TokenStore.enrolment_use(conn, secret, cid, now)
            if use is None:
                raise Unauthenticated("enrolment_tokens: unknown, already used, expired or revoked")
            if not self._task_exists(conn, use.task_id, tasks):
                raise InvalidArgument("enrolment_tokens", f"the task {use.task_id} of a token no longer exists")
            uses.append(use)
        for task_id in r.task_ids:
            if not self._task_exists(conn, task_id, tasks):
                raise InvalidArgument("task_ids", f"unknown task {task_id!r}")
        client = conn.execute(_CLIENT, {"client_id": cid}).first()
        plan = _Plan(registration=r, uses=uses, client=client, memberships={})
        if r.secure and not r.authenticated:
            if not uses:
                raise Unauthenticated("present the agent credential (authorization) or an enrolment token")
            # A new device has no credential yet: one query fewer per enrolment (a credential and its
            # client row are written in one transaction, so never one without the other).
            if client is not None and TokenStore.has_agent_credential(conn, cid, now):
                if not all(use.retry for use in uses):
                    raise PermissionDenied(f"device.device_id: client {cid} is enrolled already; present its "
                                           "credential (an admin can revoke it to re-enrol the device)")
                # This device redeemed these tokens moments ago and the response carrying its
                # credential never arrived: the credential it may not hold is replaced.
                plan.revoke = True
            plan.issue = True
        if client is not None:
            plan.memberships = {task_id: bool(enrolled) for task_id, enrolled in
                                conn.execute(_MEMBERSHIPS, {"client_id": cid})}
        if r.secure:
            token_tasks = {use.task_id for use in uses}
            for task_id in r.task_ids:
                if not plan.memberships.get(task_id) and task_id not in token_tasks:
                    raise PermissionDenied(f"task_ids: client {cid} is not enrolled in {task_id}; "
                                           "enrol with an enrolment token for that task")
        return plan

    @staticmethod
    def _apply(conn: Connection, plan: _Plan, issued: list[tuple[str, Identity]]) -> Registered:
        """The writes of a checked registration (any failure here rolls back its whole transaction)."""
        r, client, cid, now = plan.registration, plan.client, plan.registration.client_id, utcnow()
        for use in plan.uses:
            TokenStore.mark_used(conn, use, cid, now)
        names = [use.name for use in plan.uses if use.name]
        credential = ""
        if plan.revoke:
            TokenStore.revoke_agent_credentials(conn, cid, now)
        if plan.issue:
            name = (client.name if client is not None else "") or next(iter(names), "") or str(
                r.device.get("hostname") or r.device.get("device_id") or cid)
            credential, identity = TokenStore.issue_agent_credential(conn, name, cid, now)
            issued.append((credential, identity))
        token_labels: dict[str, str] = {}
        for use in plan.uses:
            token_labels.update(use.labels)
        # The tokens' labels at enrolment only, not when a lost response is retried (an operator may
        # have changed them in between).
        enrolment_labels = token_labels if plan.uses and not all(use.retry for use in plan.uses) else {}
        token_tasks = {use.task_id for use in plan.uses}
        tasks = sorted({*r.task_ids, *token_tasks})
        if client is None:
            conn.execute(_INSERT_CLIENT, {
                "id": cid, "device": r.device, "data_path": r.data_path, "state": S.CLIENT_STATE_ONLINE,
                "state_reason": "", "last_heartbeat": now, "current_run_id": "", "registered_at": now,
                "metrics_address": r.metrics_address, "supernode_public_key": r.supernode_public_key,
                "name": next(iter(names), ""), "agent_labels": r.labels, "last_selected_at": None})
            rows = first_labels(cid, r.labels, enrolment_labels)
            if rows:
                conn.execute(_INSERT_LABELS, rows)
            if tasks:
                conn.execute(_INSERT_MEMBERSHIPS, [{"task_id": task_id, "client_id": cid, "enrolled": True,
                                                    "selected": False} for task_id in tasks])
            return Registered(credential, tasks)
        # A known device: only what changed is written. Re-registering after a control-service restart,
        # a whole fleet at once, is then reads only. The last heartbeat is liveness (agents/liveness.py).
        changes: dict[str, Any] = {name: value for name, value in (
            ("device", r.device), ("data_path", r.data_path), ("metrics_address", r.metrics_address),
            ("supernode_public_key", r.supernode_public_key)) if getattr(client, name) != value}
        if not client.name and names:  # the name given at enrolment: the first named token's
            changes["name"] = names[0]
        if client.state in OFFLINE_STATES:
            changes["state"], changes["state_reason"] = S.CLIENT_STATE_ONLINE, "registered"
        previous = dict(client.agent_labels or {})
        if previous != r.labels or enrolment_labels:  # rare: an ORM session on this transaction's connection
            with Session(bind=conn) as db:
                if update_agent_labels(db, cid, previous, r.labels):
                    changes["agent_labels"] = r.labels
                if enrolment_labels:
                    set_labels(db, cid, enrolment_labels, LabelSource.ENROLMENT)
                db.flush()
        if changes:
            conn.execute(update(CLIENTS).where(CLIENTS.c.id == cid).values(**changes))
        new_tasks = [task_id for task_id in tasks if task_id not in plan.memberships]
        if new_tasks:
            conn.execute(_INSERT_MEMBERSHIPS, [{"task_id": task_id, "client_id": cid, "enrolled": True,
                                                "selected": False} for task_id in new_tasks])
        for task_id in tasks:
            if plan.memberships.get(task_id) is False:
                conn.execute(_ENROL_AGAIN, {"b_task_id": task_id, "b_client_id": cid})
        enrolled = {task_id for task_id, is_enrolled in plan.memberships.items() if is_enrolled}
        return Registered(credential, sorted(enrolled | set(tasks)))
