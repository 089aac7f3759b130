"""Observe ServerApps written against Flower's older API.

Two ways run such apps, and both are hooked for the life of the ServerApp process:
- ``LegacyContext`` + ``DefaultWorkflow`` (``flwr.server.workflow``): ``DefaultWorkflow.__call__``;
- ``ServerApp(server_fn=...)`` returning ``ServerAppComponents``, which Flower runs with the
  legacy ``flwr.server.Server``: ``Server.fit``, and the module's ``fit_clients`` /
  ``evaluate_clients``, which send each client's message from its own thread (reported as one
  phase through :meth:`ObservedGrid.phase`).

Either way the app's strategy (any subclass of ``flwr.server.strategy.Strategy``, custom ones
included) is wrapped in :class:`ObservedLegacyStrategy`, which reports aggregated and central
metrics and can hand out a stored model to resume from; a round ends when its federated
evaluation step returns, and the global model is stored then. Its waits for clients end with the
round timeout (:mod:`clients`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Server
from flwr.server import server as server_module
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from fedops_common.proto import common_pb2
from fedops_flower.serverapp.clients import BoundedClientManager
from fedops_flower.serverapp.grid import ObservedGrid
from fedops_flower.serverapp.reporter import CooperativeStop, Reporter


def _with_loss(loss: Any, metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {**({"loss": loss} if loss is not None else {}), **(metrics or {})}


def _arrays(parameters: Parameters | None) -> tuple[dict[str, np.ndarray], str]:
    """The global model as named arrays, or why there is none."""
    if parameters is None or not parameters.tensors:
        return {}, ("the strategy's global parameters are empty (federated analytics, or a strategy "
                    "without a model): nothing to store")
    try:
        return {f"param_{i}": array for i, array in enumerate(parameters_to_ndarrays(parameters))}, ""
    except Exception as err:  # a custom tensor_type FedOps cannot read as NumPy arrays
        return {}, f"parameters of tensor type {parameters.tensor_type!r} are not NumPy arrays: {err}"


class ObservedLegacyStrategy(Strategy):
    """Delegates every call to the app's strategy and reports what it returns."""

    def __init__(self, inner: Strategy, reporter: Reporter, resume: Parameters | None) -> None:
        self.inner = inner
        self._reporter = reporter
        self._resume = resume
        self.central: dict[int, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:  # attributes of the app's own strategy class
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return repr(self.inner)

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        if self._resume is not None:
            return self._resume
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        self._reporter.set_round(server_round)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        self._reporter.aggregated(server_round, "train", metrics)
        return parameters, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        self._reporter.set_round(server_round)
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
        loss, metrics = self.inner.aggregate_evaluate(server_round, results, failures)
        self._reporter.aggregated(server_round, "evaluate", _with_loss(loss, metrics))
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters) -> Any:
        result = self.inner.evaluate(server_round, parameters)
        metrics = _with_loss(*result) if result is not None else {}
        if server_round == 0:
            if result is not None:
                self._reporter.central_evaluation(metrics)
        else:
            self.central[server_round] = metrics
        return result

    def finish_round(self, server_round: int, parameters: Parameters | None) -> None:
        """Store the round's model and report the round; a cooperative stop ends the run here."""
        arrays, reason = _arrays(parameters)
        if self._reporter.round_finished(server_round, arrays, self.central.pop(server_round, None), reason):
            raise CooperativeStop(f"stopped by operator after round {server_round}")


def _resume_parameters(resume: dict[str, np.ndarray] | None) -> Parameters | None:
    return ndarrays_to_parameters(list(resume.values())) if resume is not None else None


def _timeout(configured: float | None, reporter: Reporter) -> float:
    return min(configured or reporter.state.round_timeout_s, reporter.state.round_timeout_s)


def observe(reporter: Reporter, resume: dict[str, np.ndarray] | None) -> Callable[[], None]:
    """Hook the legacy workflow and server in this process; returns a function that undoes it."""
    workflow_call, server_fit = DefaultWorkflow.__call__, Server.fit
    fit_clients, evaluate_clients = server_module.fit_clients, server_module.evaluate_clients

    @functools.wraps(workflow_call)
    def observed_workflow(self: DefaultWorkflow, grid: Any, context: Any) -> None:
        if not isinstance(context, LegacyContext):
            return workflow_call(self, grid, context)
        strategy = ObservedLegacyStrategy(context.strategy, reporter, _resume_parameters(resume))
        evaluate_workflow = self.evaluate_workflow

        def observed_evaluate_workflow(grid_: Any, context_: Any) -> None:
            evaluate_workflow(grid_, context_)
            server_round = int(context_.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
            record = context_.state.array_records.get(MAIN_PARAMS_RECORD)
            strategy.finish_round(server_round, compat.arrayrecord_to_parameters(record, keep_input=True)
                                  if record is not None else None)

        clients = context.client_manager
        context.strategy, self.evaluate_workflow = strategy, observed_evaluate_workflow
        context.client_manager = BoundedClientManager(clients, reporter, strategy.inner)
        reporter.strategy_started(common_pb2.API_STYLE_LEGACY_WORKFLOW, strategy.inner, context.config.num_rounds,
                                  _timeout(context.config.round_timeout, reporter))
        try:
            return workflow_call(self, grid, context)
        finally:
            context.strategy, self.evaluate_workflow = strategy.inner, evaluate_workflow
            context.client_manager = clients

    @functools.wraps(server_fit)
    def observed_fit(self: Server, num_rounds: int, timeout: float | None) -> Any:
        strategy = ObservedLegacyStrategy(self.strategy, reporter, _resume_parameters(resume))
        evaluate_round = self.evaluate_round

        def observed_evaluate_round(server_round: int, timeout: float | None) -> Any:
            result = evaluate_round(server_round=server_round, timeout=timeout)
            strategy.finish_round(server_round, self.parameters)
            return result

        self.strategy, clients = strategy, self._client_manager
        self._client_manager = BoundedClientManager(clients, reporter, strategy.inner)
        self.evaluate_round = observed_evaluate_round  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit
        reporter.strategy_started(common_pb2.API_STYLE_LEGACY_SERVER, strategy.inner, num_rounds,
                                  _timeout(timeout, reporter))
        try:
            return server_fit(self, num_rounds, timeout)
        finally:
            self.strategy, self._client_manager = strategy.inner, clients
            del self.evaluate_round

    def batched(original: Callable[..., Any], phase: str) -> Callable[..., Any]:
        @functools.wraps(original)
        def send(client_instructions: Any, max_workers: Any, timeout: float | None, group_id: int) -> Any:
            grid = getattr(client_instructions[0][0], "grid", None) if client_instructions else None
            if not isinstance(grid, ObservedGrid):
                return original(client_instructions, max_workers, timeout, group_id)
            with grid.phase(group_id, phase, [proxy.node_id for proxy, _ in client_instructions], timeout):
                return original(client_instructions, max_workers, timeout, group_id)
        return send

    DefaultWorkflow.__call__ = observed_workflow  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit
    Server.fit = observed_fit  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit
    server_module.fit_clients = batched(fit_clients, "train")
    server_module.evaluate_clients = batched(evaluate_clients, "evaluate")

    def undo() -> None:
        DefaultWorkflow.__call__ = workflow_call  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit
        Server.fit = server_fit  # type: ignore[method-assign]  # the hook: patched for this process, undone on exit
        server_module.fit_clients, server_module.evaluate_clients = fit_clients, evaluate_clients

    return undo
