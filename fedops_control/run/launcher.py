"""Where a run's Flower SuperLink lives. One interface; a local-process launcher for now.

A Kubernetes launcher implements the same two methods.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fedops_common.net import free_port, wait_for_port


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for any Flower process: own FLWR_HOME, no telemetry, no update checks."""
    env = dict(os.environ)
    env.update(FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               PYTHONUNBUFFERED="1")
    return env


def flower_bin(name: str) -> str:
    """Path of a Flower console script in this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class SuperLinkHandle:
    """A running SuperLink: the address agents and the CLI use, and how to stop it."""

    run_id: str
    address: str                 # host:port of Flower's HTTP API (Fleet + Control)
    flwr_home: Path
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)


class SuperLinkLauncher(Protocol):
    """Starts and stops the SuperLink of one run."""

    async def start(self, run_id: str, workdir: Path) -> SuperLinkHandle: ...

    async def stop(self, handle: SuperLinkHandle) -> None: ...


def kill_process_group(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left: no strays."""
    if process.poll() is not None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait(timeout=grace_s)


class LocalProcessLauncher:
    """Runs ``flower-superlink`` as a child process group on this host."""

    def __init__(self, bind_host: str = "127.0.0.1", advertised_host: str | None = None) -> None:
        self.bind_host = bind_host
        self.advertised_host = advertised_host or bind_host

    async def start(self, run_id: str, workdir: Path) -> SuperLinkHandle:
        """Start the SuperLink and wait until it accepts connections."""
        flwr_home = workdir / "superlink"
        flwr_home.mkdir(parents=True, exist_ok=True)
        port = free_port(self.bind_host)
        log = open(workdir / "superlink.log", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [flower_bin("flower-superlink"), "--insecure", "--host", self.bind_host, "--port", str(port),
             "--database", str(flwr_home / "state.db"), "--disable-runtime-dependency-installation"],
            env=flower_env(flwr_home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            await asyncio.to_thread(wait_for_port, self.bind_host, port, 60.0)
        except TimeoutError:
            kill_process_group(process)
            raise
        return SuperLinkHandle(run_id=run_id, address=f"{self.advertised_host}:{port}",
                               flwr_home=flwr_home, process=process,
                               extra={"local_address": f"{self.bind_host}:{port}"})

    async def stop(self, handle: SuperLinkHandle) -> None:
        """Stop the SuperLink and every ServerApp process it spawned."""
        if handle.process is not None:
            await asyncio.to_thread(kill_process_group, handle.process)
