"""hold-app: a ServerApp that sends no message and waits ``hold-s`` seconds (a run held running)."""

import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Wait; send nothing."""
    time.sleep(float(context.run_config["hold-s"]))
