"""Observe Message-API strategies (``flwr.serverapp.strategy.Strategy``) through their public ``start``.

Every strategy of the new API, Flower's and custom subclasses alike, runs its rounds in
``Strategy.start``; wrapping it (for the life of the ServerApp process) gives the round
boundaries, the aggregated metrics, central evaluation, the global model of every round,
resuming from a stored model, and cooperative stop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedops_common.logging import get_logger
from fedops_common.proto import common_pb2
from fedops_flower.serverapp.clients import check_selection
from fedops_flower.serverapp.reporter import CooperativeStop, Reporter


def observe(reporter: Reporter, resume: ArrayRecord | None) -> Callable[[], None]:
    """Wrap ``Strategy.start`` in this process; returns a function that undoes it."""
    original = Strategy.start
    state = reporter.state

    @functools.wraps(original)
    def start(self: Strategy, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: Any = None, evaluate_config: Any = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Any:
        aggregate_train, aggregate_evaluate = self.aggregate_train, self.aggregate_evaluate
        configure_train, configure_evaluate = self.configure_train, self.configure_evaluate

        def observed_aggregate_train(server_round: int, replies: Any) -> Any:
            arrays, metrics = aggregate_train(server_round, replies)
            reporter.aggregated(server_round, "train", metrics)
            return arrays, metrics

        def observed_aggregate_evaluate(server_round: int, replies: Any) -> Any:
            metrics = aggregate_evaluate(server_round, replies)
            reporter.aggregated(server_round, "evaluate", metrics)
            return metrics

        def observed_configure_train(server_round: int, *args: Any, **kwargs: Any) -> Any:
            reporter.set_round(server_round)
            get_logger(__name__).info("configuring train round", strategy=type(self).__name__)
            return configure_train(server_round, *args, **kwargs)

        def observed_configure_evaluate(server_round: int, *args: Any, **kwargs: Any) -> Any:
            reporter.set_round(server_round)
            get_logger(__name__).info("configuring evaluate round", strategy=type(self).__name__)
            return configure_evaluate(server_round, *args, **kwargs)

        self.configure_train = observed_configure_train  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit
        self.configure_evaluate = observed_configure_evaluate  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit
        self.aggregate_train = observed_aggregate_train  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit
        self.aggregate_evaluate = observed_aggregate_evaluate  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit

        def observed_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            # Flower calls this after every round's evaluate phase (and with round 0 first),
            # whether or not the app passed an evaluate_fn: the round ends here.
            result = evaluate_fn(server_round, arrays) if evaluate_fn else None
            if server_round == 0:
                if result is not None:
                    reporter.central_evaluation(result)
                return result
            model = {key: array.numpy() for key, array in arrays.items()}
            if reporter.round_finished(server_round, model, result):
                raise CooperativeStop(f"stopped by operator after round {server_round}")
            return result

        capped = min(timeout, state.round_timeout_s)
        reporter.strategy_started(common_pb2.API_STYLE_MESSAGE_STRATEGY, self, num_rounds, capped)
        check_selection(reporter, self, int(getattr(self, "min_available_nodes", 0) or 0), "min_available_nodes")
        return original(self, grid, resume if resume is not None else initial_arrays, num_rounds,
                        capped, train_config, evaluate_config, observed_evaluate)

    Strategy.start = start  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit

    def undo() -> None:
        Strategy.start = original  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit

    return undo
