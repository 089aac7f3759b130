"""The ServerApp: raises at once, so the run fails."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Fail on purpose."""
    raise RuntimeError("failing_app: this ServerApp always fails")
