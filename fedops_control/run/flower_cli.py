"""Talk to a run's SuperLink through Flower's own CLI (`flwr run`, `flwr ls`, `flwr stop`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import tomli_w

from fedops_common.proc import console_script, flower_env
from fedops_control.run.launcher import SuperLinkHandle

CONNECTION = "fedops"


class FlowerCliError(RuntimeError):
    """A `flwr` command failed."""


def write_connection(handle: SuperLinkHandle, cli_home: Path) -> None:
    """Write the Flower config that names the run's SuperLink as the default connection."""
    cli_home.mkdir(parents=True, exist_ok=True)
    address = handle.extra.get("local_address", handle.address)
    connection: dict[str, Any] = {"address": address, "insecure": True}
    if handle.ca_file is not None:
        connection = {"address": address, "root-certificates": str(handle.ca_file)}
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (cli_home / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")


async def _flwr(cli_home: Path, *args: str, timeout_s: float = 120.0) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        console_script("flwr"), *args, "--format", "json", env=flower_env(cli_home),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    text = out.decode(errors="replace").strip()
    try:
        payload = json.loads(text[text.index("{"):]) if "{" in text else {}
    except ValueError:
        payload = {}
    if process.returncode != 0 or not payload.get("success", False):
        detail = payload.get("error-message") or err.decode(errors="replace")[-800:] or text[-800:]
        raise FlowerCliError(f"flwr {args[0]} failed: {detail.strip()}")
    return payload


async def submit_run(cli_home: Path, app_dir: Path, overrides_file: Path) -> str:
    """`flwr run`: submit the bundle; returns Flower's run id."""
    payload = await _flwr(cli_home, "run", str(app_dir), CONNECTION, "--run-config", str(overrides_file))
    return str(payload["run-id"])


async def run_status(cli_home: Path, flower_run_id: str) -> str:
    """`flwr ls --run-id`: Flower's status string, e.g. ``running`` or ``finished:completed``."""
    payload = await _flwr(cli_home, "ls", CONNECTION, "--run-id", flower_run_id, timeout_s=30)
    runs = payload.get("runs", [])
    if not runs:
        return "unknown"
    run = runs[0]
    status = run.get("status", "unknown")
    details = run.get("status-details")
    return status if not details or details == "N/A" else f"{status}:{details}"


async def register_supernode(cli_home: Path, public_key: str, name: str) -> None:
    """`flwr supernode register`: admit the SuperNode holding this key (SuperNode authentication)."""
    key_file = cli_home / f"{name}.pub"
    key_file.write_text(public_key + "\n", encoding="ascii")
    await _flwr(cli_home, "supernode", "register", str(key_file), CONNECTION, "--name", name, timeout_s=60)


async def stop_run(cli_home: Path, flower_run_id: str) -> None:
    """`flwr stop`: ask the SuperLink to stop the run now."""
    await _flwr(cli_home, "stop", flower_run_id, CONNECTION, timeout_s=30)


def write_overrides(path: Path, values: dict[str, Any]) -> Path:
    """Write run-config overrides as the TOML file `flwr run --run-config` accepts."""
    path.write_text(tomli_w.dumps(values), encoding="utf-8")
    return path
