"""`fedops-telemetry`: set up Elasticsearch for FedOps, or ship a telemetry directory by hand."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from elastic_transport import TransportError
from elasticsearch import ApiError

from fedops_common.telemetry.actor import ENV_ELASTICSEARCH_URL
from fedops_common.telemetry.elastic import TEMPLATES_DIR, apply_templates
from fedops_common.telemetry.kibana import (
    SAVED_OBJECTS,
    KibanaError,
    import_saved_objects,
)
from fedops_common.telemetry.shipper import Shipper, elasticsearch_client

app = typer.Typer(help="FedOps telemetry: Elasticsearch setup and shipping.", no_args_is_help=True)
URL = Annotated[str, typer.Option(envvar=ENV_ELASTICSEARCH_URL, help="Elasticsearch URL")]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def setup(elasticsearch_url: URL = "http://127.0.0.1:9200",
          templates: Annotated[Path, typer.Option(help="directory of index template JSON files")] = TEMPLATES_DIR,
          ) -> None:
    """Apply the composable index templates and create every alias (idempotent)."""
    try:
        applied = apply_templates(elasticsearch_client(elasticsearch_url), templates)
    except FileNotFoundError as err:
        _fail(str(err), 2)
    except (ApiError, TransportError) as err:
        _fail(f"Elasticsearch at {elasticsearch_url}: {err}")
    typer.echo(json.dumps({"applied": applied}, indent=2))


@app.command("kibana-import")
def kibana_import(kibana_url: Annotated[str, typer.Option(envvar="FEDOPS_KIBANA_URL", help="Kibana URL")] =
                  "http://127.0.0.1:5601",
                  file: Annotated[Path, typer.Option(help="saved objects NDJSON")] = SAVED_OBJECTS) -> None:
    """Import the data views, saved searches and dashboard into Kibana (overwrites; idempotent)."""
    if not file.is_file():
        _fail(f"{file} not found", 2)
    try:
        answer = import_saved_objects(kibana_url, file)
    except KibanaError as err:
        _fail(str(err))
    typer.echo(json.dumps({"imported": answer.get("successCount", 0)}))


@app.command()
def ship(directory: Annotated[Path, typer.Argument(help="an actor's telemetry directory")],
         elasticsearch_url: URL = "http://127.0.0.1:9200",
         follow: Annotated[bool, typer.Option(help="keep shipping new documents until interrupted")] = False,
         ) -> None:
    """Ship a telemetry directory's backlog (e.g. one spooled while offline)."""
    if not directory.is_dir():
        _fail(f"{directory} is not a directory", 2)
    shipper = Shipper(elasticsearch_client(elasticsearch_url), directory)
    try:
        while True:
            stats = shipper.ship_once()
            typer.echo(json.dumps({"created": stats.created, "already_there": stats.already_there,
                                   "rejected": stats.rejected, "backlog_bytes": shipper.backlog_bytes()}))
            if not follow:
                return
            time.sleep(1)
    except (ApiError, TransportError) as err:
        _fail(f"Elasticsearch at {elasticsearch_url}: {err}")
    except KeyboardInterrupt:
        return


def main() -> None:
    """Console entry point."""
    app()
