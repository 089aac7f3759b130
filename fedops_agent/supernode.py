"""Launch and supervise the Flower SuperNode of one run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fedops_common.logging import get_logger
from fedops_common.net import free_port

log = get_logger(__name__)


@dataclass
class SuperNodeProcess:
    """A running SuperNode."""

    run_id: str
    process: subprocess.Popen[bytes]
    stop_requested: bool = False


def _flower_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def start_supernode(run_id: str, superlink: str, node_config: dict[str, str], workdir: Path) -> SuperNodeProcess:
    """Start ``flower-supernode`` in its own process group with its own FLWR_HOME and port."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = " ".join(f"{key}={value}" for key, value in sorted(node_config.items()))
    env = dict(os.environ, FLWR_HOME=str(workdir / "flwr"), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1")
    log_file = open(workdir / "supernode.log", "ab")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        [_flower_bin("flower-supernode"), "--insecure", "--superlink", superlink,
         "--port", str(free_port()), "--node-config", config, "--max-wait-time", "60"],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    log_file.close()
    log.info("SuperNode started", run_id=run_id, pid=process.pid, superlink=superlink)
    return SuperNodeProcess(run_id=run_id, process=process)


def stop_supernode(node: SuperNodeProcess, hard: bool, grace_s: float = 5.0) -> None:
    """Stop the SuperNode and its ClientApp processes (the whole process group)."""
    node.stop_requested = True
    sig = signal.SIGKILL if hard else signal.SIGTERM
    try:
        os.killpg(node.process.pid, sig)
        node.process.wait(timeout=grace_s)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(node.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.process.wait(timeout=grace_s)
    # Children that outlived the SuperNode itself (e.g. a ClientApp) are in the same group.
    try:
        os.killpg(node.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def wait_exit(node: SuperNodeProcess) -> int:
    """Wait for the SuperNode to exit; returns its exit code."""
    return await asyncio.to_thread(node.process.wait)
