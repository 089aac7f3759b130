"""Where a run's Flower SuperLink lives. One interface; a local-process launcher for now.

A Kubernetes launcher implements the same two methods.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fedops_common.net import free_port, wait_for_port
from fedops_common.proc import console_script, flower_env, scan_processes, stop_group_by_pid, stop_process_group


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

    def adopt(self, run_id: str, workdir: Path, address: str) -> SuperLinkHandle | None:
        """Find the SuperLink of a run started before this control service restarted (None if gone)."""
        ...


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
            [console_script("flower-superlink"), "--insecure", "--host", self.bind_host, "--port", str(port),
             "--database", str(flwr_home / "state.db"), "--disable-runtime-dependency-installation"],
            env=flower_env(flwr_home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        local = "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host
        try:
            await asyncio.to_thread(wait_for_port, local, port, 60.0)
        except TimeoutError:
            stop_process_group(process)
            raise
        return SuperLinkHandle(run_id=run_id, address=f"{self.advertised_host}:{port}",
                               flwr_home=flwr_home, process=process,
                               extra={"local_address": f"{local}:{port}"})

    async def stop(self, handle: SuperLinkHandle) -> None:
        """Stop the SuperLink and every ServerApp process it spawned."""
        if handle.process is not None:
            await asyncio.to_thread(stop_process_group, handle.process)
        elif handle.extra.get("pid"):
            await asyncio.to_thread(stop_group_by_pid, int(handle.extra["pid"]))

    def adopt(self, run_id: str, workdir: Path, address: str) -> SuperLinkHandle | None:
        """The SuperLink process of ``run_id`` is found by its database path, which names the run's workdir."""
        flwr_home = workdir / "superlink"
        marker = f"--database\0{flwr_home / 'state.db'}\0".encode()
        for pid, _, cmdline in scan_processes():
            if b"flower-superlink" in cmdline and marker in cmdline:
                port = address.rsplit(":", 1)[1]
                local = "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host
                return SuperLinkHandle(run_id=run_id, address=address, flwr_home=flwr_home, process=None,
                                       extra={"local_address": f"{local}:{port}", "pid": str(pid)})
        return None

