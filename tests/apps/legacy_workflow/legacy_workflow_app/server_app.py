"""legacy-workflow-app: a Flower ServerApp running FedAvg through the DefaultWorkflow."""

from flwr.common import Context, Metrics
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

from legacy_workflow_app.task import load_centralized_data, test


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


# Flower ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for ``num-server-rounds`` rounds (no initial parameters: a client provides them)."""
    num_rounds = int(context.run_config["num-server-rounds"])
    strategy = FedAvg(
        fraction_fit=float(context.run_config["fraction-train"]),
        fraction_evaluate=float(context.run_config["fraction-evaluate"]),
        min_fit_clients=2,
        min_evaluate_clients=2,
        min_available_clients=2,
        evaluate_fn=get_evaluate_fn(),
        fit_metrics_aggregation_fn=weighted_average,
        evaluate_metrics_aggregation_fn=weighted_average,
    )

    # Construct the LegacyContext
    context = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=num_rounds),
        strategy=strategy,
    )

    # Create the train/evaluate workflow
    workflow = DefaultWorkflow()

    # Execute
    workflow(grid, context)
