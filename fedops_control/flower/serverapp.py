"""The ServerApp FedOps runs in place of the user's: it loads theirs and observes it.

The user's app is untouched. We hand it an :class:`ObservedGrid` and hook the public
``Strategy.start`` so that central evaluation, aggregated metrics and the global model
of every round are reported, and so that a run can resume from a stored model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore.object_ref import load_app

from fedops_common.logging import bind_ids, get_logger
from fedops_common.observer import ObserverClient, arrays_to_npz, npz_to_arrays
from fedops_common.proto import agent_pb2, common_pb2
from fedops_common.telemetry.actor import app_process_telemetry
from fedops_control.flower.grid import CooperativeStop, ObservedGrid, RunState

# Keys FedOps adds to the run config of the bundle it builds (see run/bundle.py).
KEY_INNER = "fedops-serverapp"
KEY_RUN_ID = "fedops-run-id"
KEY_TASK_ID = "fedops-task-id"
KEY_TIMEOUT = "fedops-round-timeout"
KEY_QUORUM = "fedops-quorum"
KEY_NODES = "fedops-node-count"
KEY_RESUME = "fedops-resume-model-id"

app = ServerApp()


def _metrics(record: MetricRecord | None) -> dict[str, float]:
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _observe_strategy(observer: ObserverClient, state: RunState, resume: ArrayRecord | None) -> Callable[[], None]:
    """Wrap ``Strategy.start`` for this process; returns a function that undoes it."""
    original = Strategy.start

    @functools.wraps(original)
    def start(self: Strategy, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: Any = None, evaluate_config: Any = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Any:
        aggregate_train, aggregate_evaluate = self.aggregate_train, self.aggregate_evaluate

        def observed_aggregate_train(server_round: int, replies: Any) -> Any:
            arrays, metrics = aggregate_train(server_round, replies)
            observer.server_event(agent_pb2.ServerEvent(
                run_id=state.run_id, kind="aggregated", round=server_round, phase="train", metrics=_metrics(metrics)))
            return arrays, metrics

        def observed_aggregate_evaluate(server_round: int, replies: Any) -> Any:
            metrics = aggregate_evaluate(server_round, replies)
            observer.server_event(agent_pb2.ServerEvent(
                run_id=state.run_id, kind="aggregated", round=server_round, phase="evaluate", metrics=_metrics(metrics)))
            return metrics

        configure_train, configure_evaluate = self.configure_train, self.configure_evaluate

        def observed_configure_train(server_round: int, *args: Any, **kwargs: Any) -> Any:
            state.current_round, state.round_from_strategy = server_round, True
            bind_ids(round=server_round)
            get_logger(__name__).info("configuring train round", strategy=type(self).__name__)
            return configure_train(server_round, *args, **kwargs)

        def observed_configure_evaluate(server_round: int, *args: Any, **kwargs: Any) -> Any:
            state.current_round, state.round_from_strategy = server_round, True
            bind_ids(round=server_round)
            get_logger(__name__).info("configuring evaluate round", strategy=type(self).__name__)
            return configure_evaluate(server_round, *args, **kwargs)

        self.configure_train = observed_configure_train  # type: ignore[method-assign]
        self.configure_evaluate = observed_configure_evaluate  # type: ignore[method-assign]
        self.aggregate_train = observed_aggregate_train  # type: ignore[method-assign]
        self.aggregate_evaluate = observed_aggregate_evaluate  # type: ignore[method-assign]

        def observed_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            result = evaluate_fn(server_round, arrays) if evaluate_fn else None
            metrics = _metrics(result)
            if server_round == 0:
                observer.server_event(agent_pb2.ServerEvent(
                    run_id=state.run_id, kind="initial_evaluation", round=0, metrics=metrics))
                return result
            data = arrays_to_npz({key: array.numpy() for key, array in arrays.items()})
            observer.upload_model(common_pb2.ModelVersion(run_id=state.run_id, round=server_round,
                                                          metrics=metrics, format="npz"), data)
            ack = observer.server_event(agent_pb2.ServerEvent(
                run_id=state.run_id, kind="round_finished", round=server_round, metrics=metrics))
            state.current_round = server_round
            if ack.stop_requested and server_round < num_rounds:
                raise CooperativeStop(f"stopped by operator after round {server_round}")
            return result

        observer.server_event(agent_pb2.ServerEvent(run_id=state.run_id, kind="strategy_started",
                                                    message=type(self).__name__,
                                                    timeout_s=min(timeout, state.round_timeout_s)))
        return original(self, grid, resume if resume is not None else initial_arrays, num_rounds,
                        min(timeout, state.round_timeout_s), train_config, evaluate_config, observed_evaluate)

    Strategy.start = start  # type: ignore[method-assign]

    def undo() -> None:
        Strategy.start = original  # type: ignore[method-assign]

    return undo


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Load the user's ServerApp, run it on an observed Grid, report the outcome."""
    cfg = context.run_config
    run_id = str(cfg[KEY_RUN_ID])
    telemetry = app_process_telemetry("fedops-serverapp")
    bind_ids(run_id=run_id, task_id=str(cfg.get(KEY_TASK_ID, "")), flower_run_id=str(context.run_id))
    log = get_logger(__name__)
    observer = ObserverClient.from_config(cfg)
    state = RunState(run_id, float(cfg[KEY_TIMEOUT]), int(cfg[KEY_QUORUM]), int(cfg.get(KEY_NODES, 0)))
    resume = None
    if cfg.get(KEY_RESUME):
        arrays = npz_to_arrays(observer.fetch_model(str(cfg[KEY_RESUME])))
        resume = ArrayRecord({key: Array(value) for key, value in arrays.items()})
        log.info("resuming from stored model", model_id=cfg[KEY_RESUME])
    undo = _observe_strategy(observer, state, resume)
    observer.server_event(agent_pb2.ServerEvent(run_id=run_id, kind="app_started",
                                                message=str(context.run_id)))
    try:
        inner = load_app(str(cfg[KEY_INNER]), RuntimeError)
        if not isinstance(inner, ServerApp):
            raise TypeError(f"{cfg[KEY_INNER]} is not a flwr ServerApp")
        inner(ObservedGrid(grid, observer, state), context)
    except CooperativeStop as stop:
        log.info("run stopped cooperatively", round=state.current_round)
        observer.server_event(agent_pb2.ServerEvent(run_id=run_id, kind="app_finished",
                                                    round=state.current_round, message=str(stop)))
    except Exception as err:  # report every failure, then let Flower mark the run failed
        log.exception("ServerApp failed", error=str(err))
        observer.server_event(agent_pb2.ServerEvent(run_id=run_id, kind="app_failed",
                                                    round=state.current_round, message=f"{type(err).__name__}: {err}"))
        raise
    else:
        observer.server_event(agent_pb2.ServerEvent(run_id=run_id, kind="app_finished",
                                                    round=state.current_round, message="completed"))
    finally:
        undo()
        observer.close()
        log.info("ServerApp exiting", round=state.current_round)
        if telemetry is not None:
            telemetry.close()
