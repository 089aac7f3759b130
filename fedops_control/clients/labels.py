"""Client labels in the database: who sets them, which value wins, and the filter that selects by them.

Labels come from three places: the enrolment token (an operator named the device's labels when
making its token), the agent's config (``fedops-agent --label``, config ``labels``) and an operator
(``SetClientLabels``). A label keeps the value set last. The agent's labels are applied when they
differ from the set it registered with last time (``clients.agent_labels``), not at every
registration: agents re-register after every reconnect, and that must not undo an operator's change.
A key the agent's config drops is removed only if the agent set it (an operator's stays).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from fedops_common.labels import MAX_LABELS, key_problem, value_problem
from fedops_control.errors import InvalidArgument
from fedops_control.state.models import ClientLabelRow, ClientRow


class LabelSource(StrEnum):
    """Who set a label (stored with it; decides what the agent's config may remove)."""

    AGENT = "agent"
    ENROLMENT = "enrolment"
    OPERATOR = "operator"


def validated(field: str, labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` as a dict, or InvalidArgument naming the field (``labels`` for a bad key, ``labels.site``
    for a bad value of ``site``)."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(field, f"at most {MAX_LABELS} labels")
    for key in sorted(labels):
        problem = key_problem(key)
        if problem:
            raise InvalidArgument(field, problem)
        problem = value_problem(labels[key])
        if problem:
            raise InvalidArgument(f"{field}.{key}", problem)
    return dict(labels)


def validated_keys(field: str, keys: list[str]) -> list[str]:
    """Label keys, or InvalidArgument naming the field."""
    if len(keys) > MAX_LABELS:
        raise InvalidArgument(field, f"at most {MAX_LABELS} keys")
    for key in keys:
        problem = key_problem(key)
        if problem:
            raise InvalidArgument(field, problem)
    return keys


# Built once (see _MEMBERSHIPS_OF in server/convert.py: no cyclic garbage per call).
_LABELS_OF = select(ClientLabelRow.client_id, ClientLabelRow.key, ClientLabelRow.value).where(
    ClientLabelRow.client_id.in_(bindparam("ids", expanding=True)))


def labels_of(db: Session, client_ids: list[str]) -> dict[str, dict[str, str]]:
    """The labels of some clients, in one query."""
    found: dict[str, dict[str, str]] = {cid: {} for cid in client_ids}
    if client_ids:
        for cid, key, value in db.execute(_LABELS_OF, {"ids": client_ids}):
            found[cid][key] = value
    return found


def set_labels(db: Session, client_id: str, labels: Mapping[str, str], source: LabelSource,
               remove: list[str] | None = None) -> None:
    """Set (overwrite) and remove labels of one client, inside the caller's transaction."""
    current = {row.key: row for row in db.query(ClientLabelRow).filter(ClientLabelRow.client_id == client_id)}
    for key in remove or []:
        if key in current and key not in labels:
            db.delete(current.pop(key))
    for key, value in labels.items():
        row = current.get(key)
        if row is None:
            db.add(ClientLabelRow(client_id=client_id, key=key, value=value, source=source.value))
        elif row.value != value or row.source != source.value:
            row.value, row.source = value, source.value


def apply_agent_labels(db: Session, row: ClientRow, labels: dict[str, str]) -> None:
    """The agent's configured labels, at registration: applied only when they changed since its last
    registration; keys it no longer sets are removed unless someone else set them since."""
    if update_agent_labels(db, row.id, row.agent_labels or {}, labels):
        row.agent_labels = labels


def update_agent_labels(db: Session, client_id: str, previous: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """The label rows of :func:`apply_agent_labels` for a client whose agent last registered with
    ``previous``; whether they changed (the caller then stores ``labels`` as the client's agent labels)."""
    if previous == labels:
        return False
    changed = {key: value for key, value in labels.items() if previous.get(key) != value}
    dropped = [key for key in previous if key not in labels]
    agent_set = {r.key for r in db.query(ClientLabelRow).filter(
        ClientLabelRow.client_id == client_id, ClientLabelRow.key.in_(dropped),
        ClientLabelRow.source == LabelSource.AGENT.value)} if dropped else set()
    set_labels(db, client_id, changed, LabelSource.AGENT, remove=sorted(agent_set))
    return True


def first_labels(client_id: str, agent: Mapping[str, str], enrolment: Mapping[str, str]) -> list[dict[str, str]]:
    """The label rows of a client that has none yet (a new device): its agent's labels, then its
    enrolment tokens' (which win), as :func:`apply_agent_labels` and :func:`set_labels` would leave them on
    an empty set. Plain rows for one INSERT: the registration of a new device needs no ORM objects."""
    rows = {key: (value, LabelSource.AGENT) for key, value in agent.items()}
    rows.update({key: (value, LabelSource.ENROLMENT) for key, value in enrolment.items()})
    return [{"client_id": client_id, "key": key, "value": value, "source": source.value}
            for key, (value, source) in rows.items()]


def matching(selector: Mapping[str, str]) -> ColumnElement[bool]:
    """A filter on ClientRow: the client has every label of ``selector`` (through the (key, value) index)."""
    pairs = [and_(ClientLabelRow.key == key, ClientLabelRow.value == value) for key, value in selector.items()]
    having = (select(ClientLabelRow.client_id).where(or_(*pairs)).group_by(ClientLabelRow.client_id)
              .having(func.count() == len(pairs)))
    return ClientRow.id.in_(having)
