"""Bounded waits for clients in apps of Flower's older API.

A legacy strategy picks its clients with ``ClientManager.sample``, which first waits for the
strategy's minimum number of connected clients for up to a day (Flower's default). A strategy that
asks for more clients than the run has (``FedAvg(min_available_clients=2)`` with one selected
client) therefore hangs the run silently, before a single message is sent, where no round timeout
applies. This manager wraps the app's own: it fails at once when the run can never have that many
clients, and otherwise waits at most the run's round timeout, then fails with the reason. The
Message API's strategies wait the same way (``min_available_nodes``): :func:`check_selection`.
"""

from __future__ import annotations

from typing import Any

from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion

from fedops_flower.serverapp.reporter import Reporter, RunState


class ClientsUnavailable(RuntimeError):
    """The app's strategy wants more clients than the run has, or than connected in time."""


def _where(state: RunState) -> str:
    return f"round {state.current_round + state.round_offset}" if state.current_round else "initialisation"


def check_selection(reporter: Reporter, strategy: Any, needed: int, settings: str) -> None:
    """Fail at once when the app's strategy waits for more clients than the run has selected."""
    state = reporter.state
    if state.node_count and needed > state.node_count:
        raise ClientsUnavailable(
            f"{_where(state)}: the app's {type(strategy).__name__} waits for {needed} clients, but the run has "
            f"{state.node_count} selected; select more clients or lower the app's minimum ({settings})")


class BoundedClientManager(ClientManager):
    """The app's client manager, with every wait for clients bounded by the round timeout."""

    def __init__(self, inner: ClientManager, reporter: Reporter, strategy: Any) -> None:
        self.inner = inner
        self._reporter = reporter
        self._strategy = strategy

    def num_available(self) -> int:
        return self.inner.num_available()

    def register(self, client: ClientProxy) -> bool:
        return self.inner.register(client)

    def unregister(self, client: ClientProxy) -> None:
        self.inner.unregister(client)

    def all(self) -> dict[str, ClientProxy]:
        return self.inner.all()

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        return self.inner.wait_for(num_clients, int(min(timeout, self._reporter.state.round_timeout_s)))

    def sample(self, num_clients: int, min_num_clients: int | None = None,
               criterion: Criterion | None = None) -> list[ClientProxy]:
        state = self._reporter.state
        needed = num_clients if min_num_clients is None else min_num_clients  # what Flower waits for
        check_selection(self._reporter, self._strategy, needed,
                        "min_available_clients, min_fit_clients, min_evaluate_clients")
        if not self.wait_for(needed):
                raise ClientsUnavailable(
                f"{_where(state)}: the app's {type(self._strategy).__name__} waits for {needed} connected clients; "
                f"{self.num_available()} connected within the round timeout ({state.round_timeout_s:g}s)")
        return self.inner.sample(num_clients, min_num_clients, criterion)
