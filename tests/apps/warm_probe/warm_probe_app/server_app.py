"""warm-probe-app: A Flower / NumPy ServerApp (Message API)."""

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from warm_probe_app.task import get_initial_params, load_centralized_data, test

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    # Read run config
    num_rounds = int(context.run_config["num-server-rounds"])
    fraction_train = float(context.run_config["fraction-train"])
    fraction_evaluate = float(context.run_config["fraction-evaluate"])
    print(f"server: starting {num_rounds} rounds", flush=True)

    # Initial model
    arrays = ArrayRecord(get_initial_params())

    # Initialize FedAvg strategy. Its default aggregation (a weighted average by
    # "num-examples") averages list-valued metrics element-wise.
    strategy = FedAvg(
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=2,
        min_evaluate_nodes=2,
        min_available_nodes=2,
    )

    # Start strategy, run FedAvg for `num_rounds`
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=num_rounds,
        evaluate_fn=central_evaluate,
    )


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Evaluate the global model on a held-out synthetic set."""
    x_test, y_test = load_centralized_data()
    loss, accuracy, class_acc = test(arrays.to_numpy_ndarrays(), x_test, y_test)
    return MetricRecord({"loss": loss, "accuracy": accuracy, "class_accuracy": class_acc})
