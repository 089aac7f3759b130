"""hold-app: a trivial ClientApp (never reached: the ServerApp sends nothing)."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Reply with the number of examples only."""
    return Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)
