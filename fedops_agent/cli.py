"""`fedops-agent`: the agent's command line. Configuration comes from a TOML file (``--config``)
and flags; flags win."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from fedops_agent import forkserver
from fedops_agent.daemon import Agent
from fedops_agent.resources import ResourceSampler
from fedops_agent.spares import DEFAULT_CAPACITY
from fedops_common.labels import LabelError, check_labels, parse_pairs
from fedops_common.security import ChannelSecurity
from fedops_common.telemetry.actor import ENV_ELASTICSEARCH_URL, start_telemetry
from fedops_common.telemetry.metrics_http import serve_metrics


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise typer.BadParameter(f"cannot read config {path}: {err}", param_hint="--config") from None


def configured_labels(from_file: Any, flags: list[str]) -> dict[str, str]:
    """The device's labels: the config file's ``labels`` table, then each ``--label key=value`` (a flag wins
    over the file for its key). Checked here, so a typo stops the agent (exit 2) instead of every registration."""
    if not isinstance(from_file, dict) or not all(isinstance(v, str | int | float | bool) for v in from_file.values()):
        raise typer.BadParameter("labels must be a table of key = \"value\"", param_hint="--config")
    values = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in from_file.items()}
    try:
        check_labels(values)
        values.update(parse_pairs(flags))
        check_labels(values)
    except LabelError as err:
        raise typer.BadParameter(err.message, param_hint="--label") from None
    return values


def run(
    config: Annotated[
        Path | None, typer.Option(help="TOML file with control, tasks, labels, data_path, state_dir, device_id")
    ] = None,
    control: Annotated[str | None, typer.Option(help="control service host:port")] = None,
    task: Annotated[list[str] | None, typer.Option(help="task id to enrol in (repeatable)")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(help="label key=value of this device, e.g. site=eu (repeatable; merged over the config's)"),
    ] = None,
    data_path: Annotated[str | None, typer.Option(help="private local data path (never leaves the device)")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="agent state and SuperNode work dirs")] = None,
    device_id: Annotated[str | None, typer.Option(help="override the stable device id")] = None,
    elasticsearch_url: Annotated[
        str | None, typer.Option(envvar=ENV_ELASTICSEARCH_URL, help="ship logs, data status and resource samples here")
    ] = None,
    metrics_listen: Annotated[str | None, typer.Option(help="host:port of /metrics (port 0: any free port)")] = None,
    metrics_advertise: Annotated[
        str | None,
        typer.Option(help="host:port Prometheus reaches /metrics at, when not the listen address (containers, NAT)"),
    ] = None,
    sample_interval: Annotated[float | None, typer.Option(help="seconds between resource samples")] = None,
    enrolment_token: Annotated[
        list[str] | None,
        typer.Option(
            envvar="FEDOPS_ENROLMENT_TOKEN", help="one-time token enrolling this device in a task (repeatable)"
        ),
    ] = None,
    tls_ca: Annotated[
        str | None, typer.Option(envvar="FEDOPS_TLS_CA", help="CA to verify the control service (TLS)")
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(envvar="FEDOPS_TLS_CERT", help="client certificate (mutual TLS)")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(envvar="FEDOPS_TLS_KEY", help="key of --tls-cert")] = None,
    preload_flower: Annotated[
        bool,
        typer.Option(
            help="import Flower once at start-up and fork each run's SuperNode from it (saves ~2 CPU-s per run start)"
        ),
    ] = True,
    warm_apps: Annotated[
        bool,
        typer.Option(
            envvar="FEDOPS_WARM_APPS",
            help="fork each ClientApp from a per-run template with the app already imported; "
                 "--no-warm-apps: a new flwr-clientapp process per message, as Flower does "
                 "(needs --preload-flower; a task opts out with client config fedops-warm-apps=false)"
        ),
    ] = True,
    warm_spares: Annotated[
        int,
        typer.Option(
            min=0,
            help="with warm apps: keep spare ClientApp templates, the app's frameworks imported, for this many "
                 "tasks (the last prepared), so a run's first round does not wait for them; each holds the "
                 "frameworks in memory (torch: ~870 MB); 0: none"
        ),
    ] = DEFAULT_CAPACITY,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start the FedOps device agent."""
    file_cfg = _load_config(config)
    security = ChannelSecurity(
        ca_file=tls_ca or file_cfg.get("tls_ca", ""),
        cert_file=tls_cert or file_cfg.get("tls_cert", ""),
        key_file=tls_key or file_cfg.get("tls_key", ""),
    )
    try:
        security.check()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--tls-ca/--tls-cert/--tls-key") from None
    tokens = [t for t in (enrolment_token or file_cfg.get("enrolment_tokens", [])) if t.strip()]
    labels = configured_labels(file_cfg.get("labels", {}), label or [])
    state = state_dir or Path(file_cfg.get("state_dir", ".fedops/agent"))
    interval = sample_interval if sample_interval is not None else float(file_cfg.get("sample_interval", 1.0))
    if interval <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--sample-interval")
    telemetry = start_telemetry("fedops-agent", state / "telemetry",
                                elasticsearch_url=elasticsearch_url or file_cfg.get("elasticsearch_url", ""),
                                log_level=log_level)
    listen = metrics_listen or file_cfg.get("metrics_listen", "127.0.0.1:0")
    try:
        _, metrics_address = serve_metrics(listen)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(f"cannot serve metrics on {listen!r}: {err}", param_hint="--metrics-listen") from None
    metrics_address = metrics_advertise or file_cfg.get("metrics_advertise", "") or metrics_address
    sampler = ResourceSampler(telemetry.writer, state, interval).start()
    agent = Agent(
        control=control or file_cfg.get("control", "127.0.0.1:50051"),
        task_ids=list(task or file_cfg.get("tasks", [])), labels=labels,
        data_path=data_path if data_path is not None else str(file_cfg.get("data_path", "")),
        state_dir=state, device_id=device_id or file_cfg.get("device_id", ""),
        telemetry=telemetry, sampler=sampler, metrics_address=metrics_address, enrolment_tokens=tokens,
        security=security, preload_flower=preload_flower, warm_apps=warm_apps, warm_spares=warm_spares)
    if preload_flower:
        forkserver.warm(warm_apps=warm_apps)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        runner = asyncio.create_task(agent.run_forever())
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, runner.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    try:
        asyncio.run(main())
    finally:
        agent.shutdown()
        sampler.stop()
        telemetry.close()


def main() -> None:
    """Console entry point."""
    typer.run(run)


if __name__ == "__main__":
    main()
