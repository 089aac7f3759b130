"""The database side of a group of registrations: every read in a few set-based SELECTs, the new
rows in a few multi-row INSERTs.

A group of 64 new devices enrolling costs 3 SELECTs (their tokens, their client rows, their tasks)
and 5 writes (tokens used, credentials, clients, labels, memberships), where a statement per
device cost 7 statements each: on PostgreSQL each statement is a round trip and about 0.14 ms of
the service's CPU. Registrations of a group must touch different clients and tokens (the
Registrar sees to that): all of a group's reads are made before any of its writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, insert, select

from fedops_control.access import enrolment_tokens
from fedops_control.access.enrolment_tokens import EnrolmentUse
from fedops_control.state.keyed import KeyedSelect
from fedops_control.state.models import ClientLabelRow, ClientRow, MembershipRow, TaskRow

if TYPE_CHECKING:
    from fedops_control.agents.enrolment import Registration

# The tables themselves (the ORM declares them as any FromClause): statements on them carry no ORM machinery.
CLIENTS, LABELS, MEMBERSHIPS, TASKS = (cast(Table, row.__table__) for row in (ClientRow, ClientLabelRow,
                                                                                MembershipRow, TaskRow))
_CLIENT_COLUMNS = (CLIENTS.c.id, CLIENTS.c.name, CLIENTS.c.device, CLIENTS.c.data_path, CLIENTS.c.metrics_address,
                   CLIENTS.c.supernode_public_key, CLIENTS.c.state, CLIENTS.c.agent_labels)
_TASKS = KeyedSelect(select(TASKS.c.id), TASKS.c.id)
_CLIENTS = KeyedSelect(select(*_CLIENT_COLUMNS), CLIENTS.c.id)
_MEMBERSHIPS = KeyedSelect(select(MEMBERSHIPS.c.client_id, MEMBERSHIPS.c.task_id, MEMBERSHIPS.c.enrolled),
                           MEMBERSHIPS.c.client_id)
_INSERT_CLIENTS, _INSERT_LABELS, _INSERT_MEMBERSHIPS = insert(CLIENTS), insert(LABELS), insert(MEMBERSHIPS)


@dataclass
class GroupReads:
    """What a group's checks read, read at once."""

    tokens: dict[str, Any]               # secret -> its credential row (those that exist)
    tasks: set[str]                      # the asked-for task ids that exist
    clients: dict[str, Any]              # client id -> its row (known devices)
    memberships: dict[str, dict[str, bool]]  # known client id -> task id -> enrolled
    holders: set[str]                    # known client ids that hold an active agent credential

    @classmethod
    def load(cls, conn: Connection, group: Sequence[Registration], now: dt.datetime) -> GroupReads:
        """Read what ``group``'s checks need: 2 to 5 statements, whatever the group's size."""
        tokens = enrolment_tokens.token_rows(conn, {secret for r in group for secret in r.enrolment_tokens})
        clients = {row.id: row for row in _CLIENTS(conn, {r.client_id for r in group})}
        memberships: dict[str, dict[str, bool]] = {}
        for client_id, task_id, enrolled in _MEMBERSHIPS(conn, clients):
            memberships.setdefault(client_id, {})[task_id] = bool(enrolled)
        # Whether a known device is enrolled already matters only when it enrols (a credential
        # and its client row are written in one transaction: a new device has none).
        holders = enrolment_tokens.credential_holders(
            conn, {r.client_id for r in group if r.secure and not r.authenticated and r.client_id in clients}, now)
        task_ids = {row.subject for row in tokens.values()} | {task_id for r in group for task_id in r.task_ids}
        tasks = {task_id for (task_id,) in _TASKS(conn, task_ids)}
        return cls(tokens=tokens, tasks=tasks, clients=clients, memberships=memberships, holders=holders)


@dataclass
class GroupWrites:
    """A group's token uses and new rows, written together by :meth:`flush` (updates of known
    devices, which are rare, are written as they are planned)."""

    uses: list[tuple[EnrolmentUse, str]] = field(default_factory=list)  # (token, the client redeeming it)
    credentials: list[dict[str, Any]] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, conn: Connection, now: dt.datetime) -> None:
        """Write them, clients before the rows that refer to them; ``TokenRaced`` when a token was
        used by another transaction meanwhile (the caller's transaction must roll back)."""
        enrolment_tokens.mark_used(conn, self.uses, now)
        enrolment_tokens.insert_credentials(conn, self.credentials)
        for statement, rows in ((_INSERT_CLIENTS, self.clients), (_INSERT_LABELS, self.labels),
                                (_INSERT_MEMBERSHIPS, self.memberships)):
            if rows:
                conn.execute(statement, rows)
