"""What the ServerApp-side hooks know about the run, and the typed reports they send.

Every hook (the observing Grid, the Message-API strategy hook, the legacy workflow and
server hooks) reports through one :class:`Reporter`, so a round is reported the same way
whatever API style the app uses.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedops_common import metricvalues
from fedops_common.logging import bind_ids, get_logger
from fedops_common.observer import ObserverClient, arrays_to_npz
from fedops_common.proto import agent_pb2, common_pb2

A = agent_pb2
NO_ARRAYS = ("the strategy's global model holds no arrays (federated analytics, or a strategy without a "
             "model): nothing to store")


class QuorumNotMet(RuntimeError):
    """Fewer successful replies than a step needed."""

    def __init__(self, message: str, failure: agent_pb2.QuorumFailure) -> None:
        super().__init__(message)
        self.failure = failure


class CooperativeStop(Exception):
    """The operator asked to stop after the current round."""


@dataclass
class RunState:
    """What the ServerApp-side instrumentation knows about the run so far."""

    run_id: str
    round_timeout_s: float
    quorum: int
    node_count: int = 0                # the run's selected clients (0: unknown)
    sent: bool = False                 # whether any message was pushed yet
    current_round: int = 0
    last_phase: str = ""
    round_from_strategy: bool = False  # a strategy hook tells the round (else: messages' group ids)
    num_rounds: int = 0                # what the strategy was started with
    rounds_finished: int = 0
    stop_requested: bool = False
    round_offset: int = 0              # rounds done before this launch (a run launched again)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Reporter:
    """Typed reports of the ServerApp wrapper (ObserverService.ReportServerEvent)."""

    def __init__(self, observer: ObserverClient, state: RunState) -> None:
        self.observer = observer
        self.state = state

    def send(self, round_number: int, **event: Any) -> agent_pb2.ServerEventAck:
        """One report, numbered in the run's rounds (the app counts from 1 in every launch);
        remembers a cooperative stop the control service asks for."""
        ack = self.observer.server_event(A.ServerEvent(run_id=self.state.run_id,
                                                       round=round_number + self.state.round_offset, **event))
        if ack.stop_requested:
            self.state.stop_requested = True
        return ack

    def set_round(self, round_number: int) -> None:
        """A strategy hook names the round it configures."""
        self.state.current_round, self.state.round_from_strategy = round_number, True
        bind_ids(round=round_number + self.state.round_offset)

    def strategy_started(self, style: common_pb2.ApiStyle.ValueType, strategy: Any,
                         num_rounds: int, timeout_s: float) -> None:
        self.state.num_rounds = num_rounds
        get_logger(__name__).info("strategy started", strategy=type(strategy).__name__, rounds=num_rounds,
                                  api_style=common_pb2.ApiStyle.Name(style))
        total = num_rounds + self.state.round_offset if num_rounds > 0 else 0
        self.send(0, strategy_started=A.StrategyStarted(api_style=style, strategy=type(strategy).__name__,
                                                        num_rounds=total, timeout_s=timeout_s))

    def aggregated(self, round_number: int, phase: str, metrics: Mapping[str, Any] | None) -> None:
        self.send(round_number, aggregated=A.Aggregated(phase=phase, metrics=metricvalues.to_proto(
            metricvalues.from_mapping(metrics))))

    def central_evaluation(self, metrics: Mapping[str, Any] | None) -> None:
        """The initial global model's evaluation (round 0); in a run launched again, that model is
        the last finished round's, whose evaluation the run already has."""
        if self.state.round_offset:
            return
        self.send(0, central_evaluation=A.CentralEvaluation(metrics=metricvalues.to_proto(
            metricvalues.from_mapping(metrics))))

    def round_finished(self, round_number: int, arrays: Mapping[str, np.ndarray] | None,
                       central: Mapping[str, Any] | None, no_model_reason: str = NO_ARRAYS) -> bool:
        """Store the round's global model (when it has one), report the round; True when the
        operator asked for a cooperative stop and rounds remain."""
        values = metricvalues.from_mapping(central)
        has_model = bool(arrays)
        if has_model:
            assert arrays is not None
            version = common_pb2.ModelVersion(run_id=self.state.run_id, round=round_number + self.state.round_offset,
                                              format="npz")
            metricvalues.fill(version.metrics, version.metric_lists, values)
            self.observer.upload_model(version, arrays_to_npz(dict(arrays)))
        self.send(round_number, round_finished=A.RoundFinished(
            central_metrics=metricvalues.to_proto(values), has_model=has_model,
            no_model_reason="" if has_model else no_model_reason))
        self.state.rounds_finished += 1
        return self.state.stop_requested and (self.state.num_rounds == 0 or round_number < self.state.num_rounds)
