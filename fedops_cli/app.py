"""`fedopsctl`: tasks, clients, runs and models from the command line.

One module per command group (tasks, clients, runs, models, telemetry, access); what they share
(global options, the control-API client, output, exit codes) is in :mod:`fedops_cli.context`.
Exit codes: 0 ok, 1 service error, 2 bad input, 3 refused; `run watch` and `run start --watch`:
0 completed, 4 failed, 5 stopped (see :mod:`fedops_cli.runs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import grpc
import typer

from fedops_cli import access, clients, models, runs, tasks, telemetry
from fedops_cli.context import Ctx, Output, fail, say
from fedops_common.security import LOCAL_ADMIN_TOKEN, ChannelSecurity, default_token_file

app = typer.Typer(help="Operate FedOps Stack: tasks, clients, runs, models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(tasks.task_app, name="task")
app.add_typer(clients.clients_app, name="clients")
app.add_typer(runs.run_app, name="run")
app.add_typer(models.models_app, name="models")
app.add_typer(telemetry.logs_app, name="logs")
app.add_typer(access.token_app, name="token")
app.add_typer(access.ca_app, name="ca")
app.command("whoami")(access.whoami)
app.command("metrics")(telemetry.platform_metrics)


@app.callback()
def main_options(
    control: Annotated[
        str, typer.Option(envvar="FEDOPS_CONTROL", help="control service host:port")
    ] = "127.0.0.1:50051",
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json")] = Output.table,
    token: Annotated[str | None, typer.Option(envvar="FEDOPS_TOKEN", help="API token (sent as a bearer token)")] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDOPS_TOKEN_FILE", help=f"file holding the API token; default {LOCAL_ADMIN_TOKEN} if present"
        ),
    ] = None,
    tls_ca: Annotated[str | None, typer.Option(envvar="FEDOPS_TLS_CA", help="CA to verify the service (TLS)")] = None,
    tls_cert: Annotated[
        str | None, typer.Option(envvar="FEDOPS_TLS_CERT", help="client certificate (mutual TLS)")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(envvar="FEDOPS_TLS_KEY", help="key of --tls-cert")] = None,
) -> None:
    """Global options."""
    Ctx.control, Ctx.output = control, output
    try:
        Ctx.security = ChannelSecurity.from_env(token=token,
                                                token_file=default_token_file(token, str(token_file or "") or None),
                                                ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key)
        Ctx.security.check()
    except (OSError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--token-file/--tls-*") from None


@app.command("health")
def health(service: Annotated[str, typer.Option(help="service name; '' = the server")] = "") -> None:
    """Check the control service through the standard gRPC health service (exit 1 unless SERVING)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(Ctx.client().channel)
    try:
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    except grpc.RpcError as err:
        fail(f"{err.code().name}: {err.details()}", 1)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if Ctx.output == Output.json:
        print(json.dumps({"status": status}))
    else:
        say(status)
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(1)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
