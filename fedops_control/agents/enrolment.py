"""Registration: the ``Register`` transaction as SQLAlchemy Core statements, committed in groups.

Every agent registers when it starts and after every reconnect, so a restarted service or a new
fleet means thousands of registrations at once. With one ORM transaction each (an object graph,
autoflush, ~10 statements) an enrolment cost 3.1 ms of CPU in process and the service 4.0 ms of
CPU per ``Register``: about 230 a second on its core (``bench/enrolment_cost.py``, bench/README.md).
Here a registration is plain SQL, no ORM object, and the registrations that arrive while the
database thread is busy are committed together (:class:`GroupCommit`), set-based: a group's reads
are one SELECT per table and its new rows one INSERT per table (``enrolment_group.py``), 8
statements for a group of 1 or of 64. In process, an enrolment alone costs 0.6 ms of CPU on SQLite;
in groups of 64, 0.16 ms on PostgreSQL and 0.22 ms on SQLite (it was 0.99 and 0.44 ms with 7
statements per registration). A real service, 64 calls in flight: about 1,500-1,900 enrolments a
second on PostgreSQL (483 with a statement per registration and four database threads) and
900-1,100 on SQLite (bench/README.md).

What one registration does, reads first (a refused registration writes nothing):

1. each enrolment token must be valid for this device now (``enrolment_tokens.enrolment_use``: one-time; a
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

- a group is cut into parts in which no two registrations share a device or a token (the same
  device twice, one token presented by two devices): a part's reads all come before its writes, so
  a registration that depends on an earlier one of its group is checked in a later part, against
  what that one wrote;

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

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Row, bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import utcnow
from fedops_common.logging import get_logger
from fedops_common.proto import agent_pb2, common_pb2
from fedops_control import metrics
from fedops_control.access import enrolment_tokens
from fedops_control.access.enrolment_tokens import EnrolmentUse, TokenRaced
from fedops_control.access.tokens import Identity, TokenStore
from fedops_control.agents.enrolment_group import CLIENTS, MEMBERSHIPS, GroupReads, GroupWrites
from fedops_control.clients.labels import LabelSource, first_labels, set_labels, update_agent_labels
from fedops_control.errors import InvalidArgument, Overloaded, PermissionDenied, Unauthenticated
from fedops_control.state.db import DatabaseWriter, GroupCommit

log = get_logger(__name__)
S = common_pb2
# Registrations per transaction. CPU per enrolment on SQLite in groups of 4, 16, 64 and 256: 0.28, 0.19,
# 0.18 and 0.12 ms (bench/enrolment_cost.py --batch, one run each; 0.53-0.70 ms alone). The gain
# flattens, and a group holds the database thread, which the sessions' status writes share, for its
# whole duration (64 × ~0.2 ms ≈ 13 ms).
MAX_BATCH = 64
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
                for part in _disjoint_parts(batch, live):
                    revoked |= self._register_part(conn, [batch[i] for i in part], part, results, issued)
        except Exception as err:  # a write failed: every registration of the group alone
            log.warning("registration group rolled back; each registration in a transaction of its own",
                        registrations=len(live), error=f"{type(err).__name__}: {err}"[:300])
            for i in live:
                results[i] = self._alone(batch[i])
            return results
        self._committed(issued, revoked)
        return results

    def _register_part(self, conn: Connection, part: list[Registration], indices: list[int],
                       results: list[Registered | Exception], issued: list[tuple[str, Identity]]) -> bool:
        """Registrations of different clients and tokens: read at once, checked, written at once.
        Fills ``results`` at ``indices``; returns whether a credential was revoked."""
        now = utcnow()
        reads, writes, revoked = GroupReads.load(conn, part, now), GroupWrites(), False
        for i, registration in zip(indices, part, strict=True):
            try:
                plan = self._check(reads, registration, now)
            except REFUSALS as refusal:
                results[i] = refusal
                continue
            results[i] = self._apply(conn, plan, writes, issued, now)
            revoked |= plan.revoke
        writes.flush(conn, now)
        return revoked

    def _alone(self, registration: Registration) -> Registered | Exception:
        """One registration in its own transaction; tried twice when it lost a race to another transaction."""
        for attempt in (1, 2):
            issued: list[tuple[str, Identity]] = []
            result: list[Registered | Exception] = [Overloaded("not done")]
            try:
                with self._engine.begin() as conn:
                    revoked = self._register_part(conn, [registration], [0], result, issued)
            except (TokenRaced, IntegrityError) as err:
                if attempt == 2:
                    return Unauthenticated("enrolment_tokens: used by a concurrent registration "
                                           f"({type(err).__name__})")
                continue
            except Exception as err:
                log.exception("registration failed", client_id=registration.client_id)
                return err
            self._committed(issued, revoked)
            return result[0]
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
    def _check(reads: GroupReads, r: Registration, now: dt.datetime) -> _Plan:
        """The refusals, and what the registration will write (from its group's reads)."""
        cid = r.client_id
        uses = []
        for secret in r.enrolment_tokens:
            use = enrolment_tokens.enrolment_use(reads.tokens.get(secret), cid, now)
            if use is None:
                raise Unauthenticated("enrolment_tokens: unknown, already used, expired or revoked")
            if use.task_id not in reads.tasks:
                raise InvalidArgument("enrolment_tokens", f"the task {use.task_id} of a token no longer exists")
            uses.append(use)
        for task_id in r.task_ids:
            if task_id not in reads.tasks:
                raise InvalidArgument("task_ids", f"unknown task {task_id!r}")
        client = reads.clients.get(cid)
        plan = _Plan(registration=r, uses=uses, client=client, memberships={})
        if r.secure and not r.authenticated:
            if not uses:
                raise Unauthenticated("present the agent credential (authorization) or an enrolment token")
            if cid in reads.holders:
                if not all(use.retry for use in uses):
                    raise PermissionDenied(f"device.device_id: client {cid} is enrolled already; present its "
                                           "credential (an admin can revoke it to re-enrol the device)")
                # This device redeemed these tokens moments ago and the response carrying its
                # credential never arrived: the credential it may not hold is replaced.
                plan.revoke = True
            plan.issue = True
        if client is not None:
            plan.memberships = dict(reads.memberships.get(cid, {}))
        if r.secure:
            token_tasks = {use.task_id for use in uses}
            for task_id in r.task_ids:
                if not plan.memberships.get(task_id) and task_id not in token_tasks:
                    raise PermissionDenied(f"task_ids: client {cid} is not enrolled in {task_id}; "
                                           "enrol with an enrolment token for that task")
        return plan

    @staticmethod
    def _apply(conn: Connection, plan: _Plan, writes: GroupWrites, issued: list[tuple[str, Identity]],
               now: dt.datetime) -> Registered:
        """The writes of a checked registration: new rows into ``writes``; a known device's updates
        and a revocation now (any failure rolls back the whole transaction)."""
        r, client, cid = plan.registration, plan.client, plan.registration.client_id
        writes.uses.extend((use, cid) for use in plan.uses)
        names = [use.name for use in plan.uses if use.name]
        credential = ""
        if plan.revoke:  # before the new credential is inserted (the group's flush)
            enrolment_tokens.revoke_agent_credentials(conn, [cid], now)
        if plan.issue:
            name = (client.name if client is not None else "") or next(iter(names), "") or str(
                r.device.get("hostname") or r.device.get("device_id") or cid)
            credential, identity, row = enrolment_tokens.new_agent_credential(name, cid, now)
            writes.credentials.append(row)
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
            writes.clients.append({
                "id": cid, "device": r.device, "data_path": r.data_path, "state": S.CLIENT_STATE_ONLINE,
                "state_reason": "", "last_heartbeat": now, "current_run_id": "", "registered_at": now,
                "metrics_address": r.metrics_address, "supernode_public_key": r.supernode_public_key,
                "name": next(iter(names), ""), "agent_labels": r.labels, "last_selected_at": None})
            writes.labels.extend(first_labels(cid, r.labels, enrolment_labels))
            writes.memberships.extend({"task_id": task_id, "client_id": cid, "enrolled": True, "selected": False}
                                      for task_id in tasks)
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
        writes.memberships.extend({"task_id": task_id, "client_id": cid, "enrolled": True, "selected": False}
                                  for task_id in tasks if task_id not in plan.memberships)
        for task_id in tasks:
            if plan.memberships.get(task_id) is False:
                conn.execute(_ENROL_AGAIN, {"b_task_id": task_id, "b_client_id": cid})
        enrolled = {task_id for task_id, is_enrolled in plan.memberships.items() if is_enrolled}
        return Registered(credential, sorted(enrolled | set(tasks)))


def _disjoint_parts(batch: Sequence[Registration], live: list[int]) -> list[list[int]]:
    """``live`` (indices into ``batch``, in arrival order) cut into consecutive parts in which no two
    registrations share a client or a token: a part's reads all come before its writes, so a
    registration that depends on an earlier one of its group (the same device twice, one token
    presented by two devices) must start a new part, which reads what the earlier one wrote."""
    parts: list[list[int]] = []
    seen: set[str] = set()
    for i in live:
        keys = {f"client:{batch[i].client_id}", *(f"token:{secret}" for secret in batch[i].enrolment_tokens)}
        if not parts or keys & seen:
            parts.append([])
            seen = set()
        parts[-1].append(i)
        seen |= keys
    return parts
