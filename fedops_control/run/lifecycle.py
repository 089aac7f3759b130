"""The run lifecycle: its states, the one table of allowed changes, and what this service holds
for a run while it has a SuperLink."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fedops_common.convert import enum_label
from fedops_common.proto import common_pb2
from fedops_control.errors import FailedPrecondition
from fedops_control.run.launcher import SuperLinkHandle
from fedops_control.state.models import RunRow

S = common_pb2
ACTIVE_STATES = (S.RUN_STATE_PENDING, S.RUN_STATE_STARTING, S.RUN_STATE_RUNNING)


# The run lifecycle: the one table of allowed state changes, checked by every step that changes state.
TRANSITIONS = {
    S.RUN_STATE_PENDING: (S.RUN_STATE_STARTING, S.RUN_STATE_FINISHED),
    S.RUN_STATE_STARTING: (S.RUN_STATE_RUNNING, S.RUN_STATE_FINISHED),
    S.RUN_STATE_RUNNING: (S.RUN_STATE_FINISHED,),
    S.RUN_STATE_FINISHED: (),
}


def check_transition(run: RunRow, to: common_pb2.RunState.ValueType) -> None:
    """Refuse a state change the lifecycle does not allow: above all, a launch step on a run that was
    stopped (finished) while it was starting, which must stay finished."""
    if to in TRANSITIONS.get(S.RunState.ValueType(run.state), ()):
        return
    if run.state == S.RUN_STATE_FINISHED:
        raise FailedPrecondition(f"run {run.id} was stopped while starting")
    raise FailedPrecondition(f"run {run.id} cannot go from {enum_label(S.RunState, run.state)} to "
                             f"{enum_label(S.RunState, to)}")


@dataclass
class ActiveRun:
    """What this service holds for a run that has a SuperLink: the launcher's handle, and when its
    ServerApp last reported (the watchdog asks Flower only after a silence)."""

    handle: SuperLinkHandle
    last_report: float = field(default_factory=time.monotonic)

    def reported(self) -> None:
        self.last_report = time.monotonic()
