"""The ClientApp: never reached (the ServerApp fails first); replies with no metrics."""

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Reply with nothing."""
    return Message(content=RecordDict(), reply_to=msg)
