"""warm-probe-app: A Flower / NumPy ClientApp (Message API) that shows how it was run.

Each reply carries the process id, how many messages this process's module has handled (1 when
each message gets a fresh process, as Flower promises) and how many objects the garbage collector
leaves alone (``gc.get_freeze_count()``: what a forked task inherited from its template). With
``crash-round`` set, client 0 exits hard (``os._exit``, no reply, no exit handlers) in that round's
train step.
"""

import gc
import os

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from warm_probe_app.task import class_accuracy, load_data, test, train

# Flower ClientApp
app = ClientApp()
HANDLED: list[str] = []  # module-level state: must never carry over to the next message


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the model on local data."""
    partition_id = int(context.node_config.get("partition-id", 0))
    server_round = int(msg.content["config"]["server-round"])
    HANDLED.append("train")
    print(f"warm-probe client {partition_id}: training round {server_round} in pid {os.getpid()}", flush=True)
    if server_round == int(context.run_config["crash-round"]) and partition_id == 0:
        os._exit(7)

    # Load the model and the data
    params = msg.content["arrays"].to_numpy_ndarrays()
    x_train, y_train, _, _ = load_data(partition_id)

    # Train
    new_params, train_loss, _ = train(
        params, x_train, y_train, int(context.run_config["local-epochs"]), float(context.run_config["lr"])
    )

    # Construct and return the reply Message
    model_record = ArrayRecord(new_params)
    metrics = {
        "train_loss": train_loss,
        "class_accuracy": class_accuracy(new_params, x_train, y_train),
        "num-examples": len(y_train),
        "pid": os.getpid(),
        "handled-in-process": len(HANDLED),
        "gc-frozen": gc.get_freeze_count(),
    }
    metric_record = MetricRecord(metrics)
    content = RecordDict({"arrays": model_record, "metrics": metric_record})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the model on local data."""
    partition_id = int(context.node_config.get("partition-id", 0))
    HANDLED.append("evaluate")
    params = msg.content["arrays"].to_numpy_ndarrays()
    _, _, x_test, y_test = load_data(partition_id)

    # Evaluate
    _, eval_acc, class_acc = test(params, x_test, y_test)

    # Construct and return the reply Message
    metrics = {
        "eval_acc": eval_acc,
        "class_accuracy": class_acc,
        "num-examples": len(y_test),
        "pid": os.getpid(),
        "handled-in-process": len(HANDLED),
        "gc-frozen": gc.get_freeze_count(),
    }
    metric_record = MetricRecord(metrics)
    content = RecordDict({"metrics": metric_record})
    return Message(content=content, reply_to=msg)
