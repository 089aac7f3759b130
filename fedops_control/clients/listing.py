"""Listing clients newest first, a page at a time, and counting them by state per label value.

Why keyset paging on (registered_at, id): a page token that is an offset shifts when clients join
(a fleet registers all the time), so a client could be listed twice or never. The token holds the
registration time and id of the previous page's last client; the next page starts strictly after
it, in the same order. ``registered_at`` never changes once a client exists, so every client that
existed when paging began is listed exactly once, and clients that join meanwhile are newer than
any token (they would belong before the first page). The state filter uses the in-memory liveness
(``AgentSessions.effective_state``: without a session a client is offline), so it is applied to
each chunk read rather than in SQL.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Query, Session

from fedops_common.proto import common_pb2, control_pb2
from fedops_control.agents.sessions import AgentSessions
from fedops_control.clients.labels import matching
from fedops_control.errors import InvalidArgument
from fedops_control.state.models import ClientLabelRow, ClientRow, MembershipRow

EPOCH = dt.datetime(1970, 1, 1)
MICROSECOND = dt.timedelta(microseconds=1)
PAGE_TOKEN = re.compile(r"([0-9]{1,19}):([A-Za-z0-9_.:@-]{1,64})")
MAX_GROUPS = 200


def page_token(row: ClientRow) -> str:
    """The token of the page after ``row``: its registration time (microseconds since the epoch, exact) and id."""
    return f"{(row.registered_at - EPOCH) // MICROSECOND}:{row.id}"


def parse_page_token(token: str) -> tuple[dt.datetime, str]:
    """(registered_at, id) of a page token, or InvalidArgument naming page_token."""
    found = PAGE_TOKEN.fullmatch(token)
    if found is None:
        raise InvalidArgument("page_token", f"not a page token of ListClients ({token[:80]!r})")
    try:
        return EPOCH + int(found.group(1)) * MICROSECOND, found.group(2)
    except OverflowError:
        raise InvalidArgument("page_token", f"not a page token of ListClients ({token[:80]!r})") from None


def clients_query(db: Session, task_id: str, labels: Mapping[str, str]) -> Query[ClientRow]:
    """Clients with a membership of ``task_id`` ("" = any) and every label of ``labels``."""
    query = db.query(ClientRow)
    if task_id:
        query = query.filter(ClientRow.id.in_(select(MembershipRow.client_id).where(MembershipRow.task_id == task_id)))
    if labels:
        query = query.filter(matching(labels))
    return query


def list_page(db: Session, agents: AgentSessions, task_id: str, labels: Mapping[str, str], state: int, size: int,
              token: str) -> tuple[list[ClientRow], str, int]:
    """One page, newest registration first: (rows, the next page's token or "", clients matching task and labels)."""
    query = clients_query(db, task_id, labels)
    total = query.count()
    after = parse_page_token(token) if token else None
    page: list[ClientRow] = []
    while len(page) <= size:  # the state filter is applied per chunk: read on until the page is full
        chunk_query = query
        if after is not None:
            # A row-value comparison: SQLite and PostgreSQL walk ix_clients_registered_at_id from the cursor.
            chunk_query = chunk_query.filter(tuple_(ClientRow.registered_at, ClientRow.id) < tuple_(*after))
        chunk = chunk_query.order_by(ClientRow.registered_at.desc(), ClientRow.id.desc()).limit(size + 1).all()
        page.extend(r for r in chunk if not state or agents.effective_state(r.id, r.state) == state)
        if len(chunk) <= size:
            break
        after = (chunk[-1].registered_at, chunk[-1].id)
    more = len(page) > size
    page = page[:size]
    return page, page_token(page[-1]) if more else "", total


def count_groups(db: Session, agents: AgentSessions, task_id: str, labels: Mapping[str, str],
                 group_by: str) -> control_pb2.CountClientsResponse:
    """Clients by state per value of the ``group_by`` label (one group of all when ""), largest groups first.
    Columns only, no rows: the same cost as the ``fedops_clients{state}`` gauge (~20 ms per 10,000 clients)."""
    base = clients_query(db, task_id, labels).subquery()
    rows: list[tuple[str, int, str | None]]
    if group_by:
        label = (select(ClientLabelRow.client_id, ClientLabelRow.value)
                 .where(ClientLabelRow.key == group_by).subquery())
        rows = [(cid, state, value) for cid, state, value in db.execute(
            select(base.c.id, base.c.state, label.c.value).outerjoin(label, label.c.client_id == base.c.id))]
    else:
        rows = [(cid, state, "") for cid, state in db.execute(select(base.c.id, base.c.state))]
    groups: dict[tuple[bool, str], dict[int, int]] = {}
    for cid, stored, value in rows:
        unlabelled = bool(group_by) and value is None
        by_state = groups.setdefault((unlabelled, value or ""), {})
        shown = agents.effective_state(cid, stored)
        by_state[shown] = by_state.get(shown, 0) + 1
    ordered = sorted(groups.items(), key=lambda item: (-sum(item[1].values()), item[0][0], item[0][1]))
    return control_pb2.CountClientsResponse(
        total=len(rows), groups_left_out=max(0, len(ordered) - MAX_GROUPS),
        groups=[control_pb2.ClientGroup(
            value=value, unlabelled=unlabelled, total=sum(counts.values()),
            states=[control_pb2.ClientStateCount(state=common_pb2.ClientState.ValueType(state), count=count)
                    for state, count in sorted(counts.items())])
            for (unlabelled, value), counts in ordered[:MAX_GROUPS]])
