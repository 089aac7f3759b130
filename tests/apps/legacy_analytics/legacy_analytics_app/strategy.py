"""legacy-analytics-app: a custom Strategy that aggregates a global mean (no model)."""

from logging import INFO

from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    log,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy


class FedAnalytics(Strategy):
    """Ask every available client for its local mean and count; combine them."""

    def __init__(self, min_available_clients: int = 2) -> None:
        super().__init__()
        self.min_available_clients = min_available_clients

    def __repr__(self) -> str:
        return "FedAnalytics"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """No model: empty parameters (so no client is asked for any)."""
        return Parameters(tensors=[], tensor_type="numpy.ndarray")

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Send the (empty) instructions to every available client."""
        # Wait until enough clients are connected, then take all of them
        client_manager.wait_for(self.min_available_clients)
        clients = client_manager.sample(
            num_clients=client_manager.num_available(),
            min_num_clients=self.min_available_clients,
        )
        fit_ins = FitIns(parameters, {"server-round": server_round})
        return [(client, fit_ins) for client in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The global mean: the clients' means weighted by their counts."""
        if not results:
            return None, {}
        total = sum(int(res.metrics["count"]) for _, res in results)
        global_mean = sum(float(res.metrics["mean"]) * int(res.metrics["count"]) for _, res in results) / total
        metrics: dict[str, Scalar] = {"global_mean": global_mean, "clients": len(results)}
        log(INFO, "round %s: global mean %.4f over %s clients (%s values)",
            server_round, global_mean, len(results), total)
        return None, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No federated evaluation."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Nothing to aggregate."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """No centralized evaluation."""
        return None
