"""`fedops-dash`: start the dashboard with one command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedops_common.logging import get_logger
from fedops_common.security import ENV_TOKEN, ENV_TOKEN_FILE, LOCAL_ADMIN_TOKEN, default_token_file, read_secret
from fedops_common.telemetry.actor import start_telemetry
from fedops_common.telemetry.metrics_http import serve_metrics
from fedops_dash.backends import ENV_CONTROL, ENV_ELASTICSEARCH, ENV_PROMETHEUS

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HERE = Path(__file__).parent
MAIN_SCRIPT = HERE / "entry" / "app.py"  # alone in its folder: see its docstring
STALE_PAGES = HERE / "pages"  # the pages' folder before they moved to views/


def default_identity(token: str, token_file: Path | None, address: str) -> str:
    """The token a browser session acts with until someone signs in with their own (see
    :mod:`fedops_dash.auth`): the one given, else, when serving on loopback only, the local admin
    token as fedopsctl finds it. Served on other interfaces, nobody becomes admin by opening the page."""
    given = str(token_file) if token_file else None
    path = default_token_file(token, given) if address in LOOPBACK else given
    try:
        return token or (read_secret(Path(path)) if path else "")
    except OSError as err:
        raise typer.BadParameter(f"cannot read {path}: {err}", param_hint="--token-file") from None


def run(
    control: Annotated[str, typer.Option(envvar=ENV_CONTROL, help="control service host:port")] = "127.0.0.1:50051",
    elasticsearch_url: Annotated[str, typer.Option(envvar=ENV_ELASTICSEARCH, help="for logs and resources")] = "",
    prometheus_url: Annotated[str, typer.Option(envvar=ENV_PROMETHEUS, help="for metrics")] = "",
    address: Annotated[str, typer.Option(help="interface to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8501,
    telemetry_dir: Annotated[Path, typer.Option(help="the dashboard's own logs")] = Path(".fedops/dash/telemetry"),
    metrics_listen: Annotated[str, typer.Option(help="host:port of the dashboard's /metrics ('' = off)")] = "",
    token: Annotated[str, typer.Option(envvar=ENV_TOKEN, help="API token every session acts with until it signs "
                                       "in with its own ('' = each session signs in)")] = "",
    token_file: Annotated[Path | None, typer.Option(
        envvar=ENV_TOKEN_FILE, help=f"file holding that token; default {LOCAL_ADMIN_TOKEN} when serving on "
        "loopback and present")] = None,
) -> None:
    """Serve the FedOps dashboard. Each browser session acts with its operator's own API token."""
    os.environ.update({ENV_CONTROL: control, ENV_ELASTICSEARCH: elasticsearch_url, ENV_PROMETHEUS: prometheus_url,
                       ENV_TOKEN: default_identity(token, token_file, address)})
    os.environ.pop(ENV_TOKEN_FILE, None)  # resolved above: the sessions' default is FEDOPS_TOKEN alone
    # Its own logs go where every actor's go (and to Elasticsearch when configured).
    start_telemetry("fedops-dash", telemetry_dir, elasticsearch_url=elasticsearch_url, inherit=False)
    log = get_logger(__name__)
    log.info("dashboard starting", address=f"{address}:{port}", control=control,
             elasticsearch=elasticsearch_url or None, prometheus=prometheus_url or None,
             default_identity=bool(os.environ[ENV_TOKEN]))
    if STALE_PAGES.exists():  # harmless (the main script is not beside it), but nothing reads it
        log.warning("a pages folder left by an earlier version is not used; it can be deleted", path=str(STALE_PAGES))
    if metrics_listen:
        try:
            serve_metrics(metrics_listen)
        except (OSError, ValueError) as err:
            raise typer.BadParameter(f"cannot serve metrics on {metrics_listen!r}: {err}",
                                     param_hint="--metrics-listen") from None
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", "run", str(MAIN_SCRIPT), "--server.address", address,
                "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
                # Streamlit's own Deploy/Stop menu would sit beside the Run page's stop buttons.
                "--client.toolbarMode", "viewer"]
    sys.exit(streamlit_cli.main())


def main() -> None:
    """Console entry point."""
    typer.run(run)
