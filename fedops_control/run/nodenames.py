"""Flower node ids named by FedOps client ids, also in rounds recorded before the name was known.

A phase names its clients when it starts (``reports.py``: the ServerApp's ``phase_started`` lists
Flower node ids); a node whose agent has not yet said which node it is (its "connected as node N"
status, or its ClientApp's first report) is recorded as ``node:<id>``. With warm ServerApps the
first phase can start within about 0.2 s of the SuperNodes joining, before those reports are in:
the run's open rounds then kept the placeholder, and diagnosis and the dashboard called a waiting
client "unknown (its node never reported)" and offline. When the name arrives, this rewrites the
placeholder in the rounds still open.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Connection, Table, bindparam, select, update

from fedops_control.state.models import RoundRow

ROUNDS = cast(Table, RoundRow.__table__)
NAMED_COLUMNS = ("phase_expected", "phase_received", "selected", "responded", "failed")
_OPEN_ROUNDS = select(ROUNDS.c.number, *(ROUNDS.c[name] for name in NAMED_COLUMNS)).where(
    ROUNDS.c.run_id == bindparam("run_id"), ROUNDS.c.finished_at.is_(None))
_UPDATE_ROUND = update(ROUNDS).where(ROUNDS.c.run_id == bindparam("b_run_id"),
                                     ROUNDS.c.number == bindparam("b_number"))


def placeholder(node_id: int | str) -> str:
    """How a round names a node whose client is not known yet."""
    return f"node:{node_id}"


def name_node_in_open_rounds(conn: Connection, run_id: str, node_id: int | str, client_id: str) -> int:
    """Replace ``node:<node_id>`` by ``client_id`` in the run's rounds not finished yet; returns
    how many rounds changed. Plain statements: callable from an ORM session's connection too."""
    old = placeholder(node_id)
    changed = 0
    for row in conn.execute(_OPEN_ROUNDS, {"run_id": run_id}).all():
        values = {name: [client_id if entry == old else entry for entry in getattr(row, name) or []]
                  for name in NAMED_COLUMNS}
        if any(values[name] != (getattr(row, name) or []) for name in NAMED_COLUMNS):
            for name in ("selected", "responded", "failed"):  # kept sorted, without repeats
                values[name] = sorted(set(values[name]))
            conn.execute(_UPDATE_ROUND, {"b_run_id": run_id, "b_number": row.number, **values})
            changed += 1
    return changed
