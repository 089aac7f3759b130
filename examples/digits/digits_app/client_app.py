"""The ClientApp: local training and evaluation on the node's own data."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_app.task import Net, load_local_data, test, train

app = ClientApp()


def _data_path(context: Context) -> str:
    # The node operator points the SuperNode at its local data (never downloaded).
    return str(context.node_config["data-path"])


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the received global model on local data."""
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x_train, y_train, _, _ = load_local_data(_data_path(context))
    cfg = context.run_config
    loss = train(net, x_train, y_train, int(cfg["local-epochs"]), float(cfg["learning-rate"]), int(cfg["batch-size"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(y_train)})
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on local held-out data."""
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, _, x_test, y_test = load_local_data(_data_path(context))
    loss, accuracy = test(net, x_test, y_test)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(y_test)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
