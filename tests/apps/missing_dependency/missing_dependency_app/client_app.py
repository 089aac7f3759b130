"""missing-dependency-app: A Flower / NumPy ClientApp that needs a package that is not installed."""

import fedops_no_such_package  # noqa: F401 - declared in pyproject.toml, never installed
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from missing_dependency_app.task import load_data, test, train

# Flower ClientApp
app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the model on local data."""
    partition_id = int(context.node_config.get("partition-id", 0))
    params = msg.content["arrays"].to_numpy_ndarrays()
    x_train, y_train, _, _ = load_data(partition_id)
    new_params, train_loss, _ = train(
        params, x_train, y_train, int(context.run_config["local-epochs"]), float(context.run_config["lr"])
    )
    metric_record = MetricRecord({"train_loss": train_loss, "num-examples": len(y_train)})
    content = RecordDict({"arrays": ArrayRecord(new_params), "metrics": metric_record})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the model on local data."""
    partition_id = int(context.node_config.get("partition-id", 0))
    params = msg.content["arrays"].to_numpy_ndarrays()
    _, _, x_test, y_test = load_data(partition_id)
    _, eval_acc = test(params, x_test, y_test)
    metric_record = MetricRecord({"eval_acc": eval_acc, "num-examples": len(y_test)})
    return Message(content=RecordDict({"metrics": metric_record}), reply_to=msg)
