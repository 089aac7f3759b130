"""Unit tests: how a run whose SuperLink was lost goes on (fedops_control.run.continuation), and
the ServerApp reporter numbering a launched-again run's rounds on from where it was."""

from __future__ import annotations

from typing import Any

from fedops_common.proto import agent_pb2, common_pb2
from fedops_control.run.continuation import Continuation, plan_continuation
from fedops_control.state.models import ModelRow, RunRow
from fedops_control.task.strategy import StrategySpec
from fedops_flower.serverapp.reporter import Reporter, RunState

S = common_pb2


def _run(**fields: Any) -> RunRow:
    values: dict[str, Any] = {"id": "r1", "api_style": S.API_STYLE_MESSAGE_STRATEGY, "total_rounds": 5,
                              "strategy": StrategySpec(rounds=5).to_dict(), "app_decides": [],
                              "resumed_from_model_id": ""}
    return RunRow(**{**values, **fields})


def _model(round_number: int) -> ModelRow:
    return ModelRow(id=f"m{round_number}", round=round_number)


def test_a_run_goes_on_from_its_latest_model_for_the_rounds_that_remain() -> None:
    plan = plan_continuation(_run(), _model(2))
    assert plan == Continuation(resume_model_id="m2", offset=2, remaining=3, rounds_key="num-server-rounds")
    assert plan.summary == "rounds 3-5 again from model m2 (round 2)"


def test_a_run_without_a_finished_round_starts_over_from_its_own_start_model() -> None:
    plan = plan_continuation(_run(resumed_from_model_id="m0"), None)
    assert isinstance(plan, Continuation) and (plan.resume_model_id, plan.offset, plan.remaining) == ("m0", 0, 5)
    assert plan.summary == "rounds 1-5 again from the start"


def test_a_run_whose_rounds_all_finished_has_nothing_left() -> None:
    plan = plan_continuation(_run(), _model(5))
    assert isinstance(plan, Continuation) and plan.remaining == 0


def test_a_run_that_cannot_resume_says_why() -> None:
    grid_only = plan_continuation(_run(api_style=S.API_STYLE_GRID_ONLY), _model(1))
    assert grid_only == "its app's rounds are not run by a strategy FedOps hooks (grid_only), so it cannot resume"
    hard_coded = plan_continuation(_run(app_decides=["rounds"]), _model(1))
    assert hard_coded == "its app hard-codes the number of rounds, so the rounds that remain cannot be set"


class _Observer:
    def __init__(self) -> None:
        self.events: list[agent_pb2.ServerEvent] = []
        self.models: list[common_pb2.ModelVersion] = []

    def server_event(self, event: agent_pb2.ServerEvent) -> agent_pb2.ServerEventAck:
        self.events.append(event)
        return agent_pb2.ServerEventAck()

    def upload_model(self, version: common_pb2.ModelVersion, payload: bytes) -> None:
        self.models.append(version)


def test_the_reporter_numbers_a_launched_again_run_on_from_its_offset() -> None:
    import numpy as np

    observer = _Observer()
    reporter = Reporter(observer, RunState("r1", 60.0, 2, round_offset=2))  # type: ignore[arg-type]  # a fake observer
    reporter.strategy_started(S.API_STYLE_MESSAGE_STRATEGY, object(), 3, 60.0)
    reporter.central_evaluation({"accuracy": 0.9})  # the resumed model's: the run has it already
    reporter.round_finished(1, {"w": np.zeros(2)}, {"accuracy": 0.95})
    kinds = [(e.WhichOneof("event"), e.round) for e in observer.events]
    assert kinds == [("strategy_started", 2), ("round_finished", 3)]
    assert observer.events[0].strategy_started.num_rounds == 5
    assert [m.round for m in observer.models] == [3]
