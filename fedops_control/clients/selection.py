"""Which clients a run takes: explicit ids, or a label selection resolved at StartRun.

A label selection (``site=eu,gpu=true``, count 500) resolves to clients enrolled in the task that
have every label and are free: holding a session now and in no active run (what an explicit id
must be too). Of those it takes the **least recently selected first** (a client never selected
before comes first), then by client id: deterministic for a given state of the fleet, and a
fleet of 2,000 matching devices shares the work instead of the same 500 (lowest ids) being picked
every time. Too few free clients is FAILED_PRECONDITION saying how many match and how many are
online. The run records the resolved ids, and each chosen client's ``last_selected_at``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fedops_common.labels import format_selector
from fedops_common.proto import common_pb2
from fedops_control.agents.sessions import AgentSessions
from fedops_control.clients.labels import matching, validated
from fedops_control.errors import FailedPrecondition, InvalidArgument
from fedops_control.state.models import ClientRow, MembershipRow

MAX_COUNT = 100_000


@dataclass(frozen=True)
class LabelSelection:
    """``count`` clients (0: every free one) with every label of ``match_labels``."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    count: int = 0

    @classmethod
    def from_proto(cls, field_name: str, message: common_pb2.LabelSelection) -> LabelSelection:
        """Validated, or InvalidArgument naming the field (``selection.labels.count``...)."""
        if not 0 <= message.count <= MAX_COUNT:
            raise InvalidArgument(f"{field_name}.count", f"between 0 (every matching client) and {MAX_COUNT}")
        return cls(validated(f"{field_name}.match_labels", message.match_labels), message.count)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> LabelSelection:
        return cls(dict(stored.get("match_labels", {})), int(stored.get("count", 0)))

    def to_dict(self) -> dict[str, Any]:
        return {"match_labels": dict(self.match_labels), "count": self.count}

    def to_proto(self) -> common_pb2.LabelSelection:
        return common_pb2.LabelSelection(match_labels=dict(self.match_labels), count=self.count)

    def describe(self) -> str:
        """``2 clients labelled site=eu,gpu=true`` (as messages and run events say it)."""
        how_many = f"{self.count} clients" if self.count else "every free client"
        return f"{how_many} labelled {format_selector(self.match_labels)}" if self.match_labels else how_many


# What a run is asked to take: explicit ids, a label selection, or None (the task's default).
Selection = list[str] | LabelSelection | None


def selection_from_request(client_ids: Iterable[str], selection: common_pb2.ClientSelection | None) -> Selection:
    """StartRun's ``client_ids`` or ``selection`` (one of them), validated."""
    ids = list(client_ids)
    which = selection.WhichOneof("by") if selection is not None else None
    if which and ids:
        raise InvalidArgument("selection", "give client_ids or selection, not both")
    if which == "labels" and selection is not None:
        return LabelSelection.from_proto("selection.labels", selection.labels)
    if which == "ids" and selection is not None:
        if not selection.ids.client_ids:
            raise InvalidArgument("selection.ids.client_ids", "at least one client id")
        return list(selection.ids.client_ids)
    return ids or None


def selection_to_dict(selection: list[str] | LabelSelection) -> dict[str, Any]:
    """How a run's clients were chosen, as stored with the run."""
    if isinstance(selection, LabelSelection):
        return {"labels": selection.to_dict()}
    return {"ids": list(selection)}


def selection_to_proto(stored: Mapping[str, Any]) -> common_pb2.ClientSelection | None:
    """The stored form back to a message (None for runs from before selections were recorded)."""
    if "labels" in stored:
        return common_pb2.ClientSelection(labels=LabelSelection.from_dict(stored["labels"]).to_proto())
    if "ids" in stored:
        return common_pb2.ClientSelection(ids=common_pb2.ClientIds(client_ids=stored["ids"]))
    return None


@dataclass(frozen=True)
class Candidate:
    """A client of the task that has the labels."""

    client_id: str
    free: bool                          # holds a session now and is in no active run
    last_selected_at: dt.datetime | None


def choose(candidates: list[Candidate], selection: LabelSelection, task_id: str) -> list[str]:
    """The clients a label selection takes (sorted by id), least recently selected first; FailedPrecondition
    saying how many match and how many are free when there are too few."""
    free = [c for c in candidates if c.free]
    wanted = selection.count or len(free)
    if not free or len(free) < wanted:
        online = f"{len(free)} of them online and in no other run" if candidates else "so none is online"
        raise FailedPrecondition(
            f"label selection of task {task_id} wants {selection.count or 'at least 1'} "
            f"client{'s' if selection.count != 1 else ''}"
            + (f" labelled {format_selector(selection.match_labels)}" if selection.match_labels else "")
            + f": {len(candidates)} enrolled client{'s' if len(candidates) != 1 else ''} match, {online}")
    never = dt.datetime.min
    ordered = sorted(free, key=lambda c: (c.last_selected_at or never, c.client_id))
    return sorted(c.client_id for c in ordered[:wanted])


def candidates(db: Session, agents: AgentSessions, task_id: str, selection: LabelSelection,
               busy: set[str]) -> list[Candidate]:
    """Clients enrolled in the task with every label (found through the label index; columns only)."""
    query = db.query(ClientRow.id, ClientRow.last_selected_at).filter(ClientRow.id.in_(
        select(MembershipRow.client_id).where(MembershipRow.task_id == task_id, MembershipRow.enrolled.is_(True))))
    if selection.match_labels:
        query = query.filter(matching(selection.match_labels))
    return [Candidate(cid, agents.is_connected(cid) and cid not in busy, last) for cid, last in query]
