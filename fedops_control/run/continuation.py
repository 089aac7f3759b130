"""Continuing a run whose SuperLink is gone after a restart of the control service.

A run's SuperLink and ServerApp are processes beside the control service. A restart of the
service alone leaves them running (the next start adopts them), but a restart of its machine
or container takes them down. Rather than fail such a run, the control service launches it
again on a new SuperLink, from the run's latest global model, for the rounds that remain: the
ServerApp wrapper numbers the rounds on from where the run was (``fedops-round-offset``), so
the run keeps its id, its rounds, its model lineage and its events. The round that was in
flight is run again from its start.

This needs the hooks to hand the stored model to the app's strategy and the number of rounds to
reach the app through its run config; a run that lacks either fails with the reason, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedops_common.proto import common_pb2
from fedops_control.state.models import ModelRow, RunRow
from fedops_control.task.strategy import StrategySpec

S = common_pb2
# The API styles whose rounds FedOps hooks (a Grid-only app's main loop is the app's own).
RESUMABLE_STYLES = (S.API_STYLE_MESSAGE_STRATEGY, S.API_STYLE_LEGACY_WORKFLOW, S.API_STYLE_LEGACY_SERVER)
RELAUNCHED = "relaunched"  # the run event of each continuation; launch = 1 + their count


@dataclass(frozen=True)
class Continuation:
    """How a run goes on: from which model, after how many rounds, for how many more."""

    resume_model_id: str  # "" when no round finished and the run started from no stored model
    offset: int           # rounds already done: the resumed model's round
    remaining: int        # 0: every round had finished (the run only had to end)
    rounds_key: str       # the app's run-config key that receives the number of rounds

    @property
    def summary(self) -> str:
        start = f"model {self.resume_model_id} (round {self.offset})" if self.offset else "the start"
        return f"rounds {self.offset + 1}-{self.offset + self.remaining} again from {start}"


def plan_continuation(run: RunRow, latest: ModelRow | None) -> Continuation | str:
    """The continuation of ``run`` given its latest stored model, or why it cannot continue."""
    strategy = StrategySpec.from_dict(run.strategy)
    rounds_key = strategy.run_config_keys.get("rounds", "")
    if run.api_style not in RESUMABLE_STYLES:
        style = S.ApiStyle.Name(S.ApiStyle.ValueType(run.api_style)).removeprefix("API_STYLE_").lower()
        return f"its app's rounds are not run by a strategy FedOps hooks ({style}), so it cannot resume"
    if not rounds_key or "rounds" in run.app_decides:
        return "its app hard-codes the number of rounds, so the rounds that remain cannot be set"
    total = run.total_rounds or strategy.rounds
    offset = min(latest.round if latest is not None else 0, total)
    resume = latest.id if latest is not None else run.resumed_from_model_id
    return Continuation(resume_model_id=resume, offset=offset, remaining=total - offset, rounds_key=rounds_key)
