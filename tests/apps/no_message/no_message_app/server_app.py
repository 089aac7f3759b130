"""no-message-app: a ServerApp that logs one line and returns."""

from logging import INFO

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Log one line; send no message."""
    log(INFO, "no-message-app: nothing to do, no message sent")
