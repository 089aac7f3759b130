"""legacy-serverfn-app: a Flower ServerApp built from a server_fn."""

from flwr.common import Context, Metrics, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from legacy_serverfn_app.task import get_initial_params, load_centralized_data, test


def weighted_average(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Aggregate the clients' "accuracy", weighted by their number of examples."""
    examples = [num_examples for num_examples, _ in metrics]
    accuracies = [num_examples * m["accuracy"] for num_examples, m in metrics]
    return {"accuracy": sum(accuracies) / sum(examples)}


def get_evaluate_fn():
    """Return a centralized evaluation function on a held-out synthetic set."""
    x_test, y_test = load_centralized_data()

    def evaluate(server_round, parameters, config):
        loss, accuracy = test(parameters, x_test, y_test)
        return loss, {"accuracy": accuracy}

    return evaluate


def server_fn(context: Context) -> ServerAppComponents:
    """Construct the components that set the ServerApp's behaviour."""
    num_rounds = int(context.run_config["num-server-rounds"])

    # Initialize model parameters on the server (no client is asked for them)
    parameters = ndarrays_to_parameters(get_initial_params())

    strategy = FedAvg(
        fraction_fit=float(context.run_config["fraction-train"]),
        fraction_evaluate=float(context.run_config["fraction-evaluate"]),
        min_fit_clients=2,
        min_evaluate_clients=2,
        min_available_clients=2,
        initial_parameters=parameters,
        evaluate_fn=get_evaluate_fn(),
        fit_metrics_aggregation_fn=weighted_average,
        evaluate_metrics_aggregation_fn=weighted_average,
    )
    config = ServerConfig(num_rounds=num_rounds)
    return ServerAppComponents(strategy=strategy, config=config)


# Flower ServerApp
app = ServerApp(server_fn=server_fn)
