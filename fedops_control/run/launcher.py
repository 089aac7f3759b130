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
from fedops_control.access.ca import CA_CERT, CertificateAuthority


@dataclass
class SuperLinkHandle:
    """A running SuperLink: the address agents and the CLI use, and how to stop it."""

    run_id: str
    address: str                 # host:port of Flower's HTTP API (Fleet + Control)
    flwr_home: Path
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    ca_file: Path | None = None  # CA of the SuperLink's TLS certificate; None = plaintext, no node auth

    @property
    def root_certificates(self) -> bytes:
        """The CA PEM agents verify the SuperLink with (b'' when plaintext)."""
        return self.ca_file.read_bytes() if self.ca_file else b""


class SuperLinkLauncher(Protocol):
    """Starts and stops the SuperLink of one run."""

    async def start(self, run_id: str, workdir: Path) -> SuperLinkHandle: ...

    async def stop(self, handle: SuperLinkHandle) -> None: ...

    def adopt(self, run_id: str, workdir: Path, address: str) -> SuperLinkHandle | None:
        """Find the SuperLink of a run started before this control service restarted (None if gone)."""
        ...


class LocalProcessLauncher:
    """Runs ``flower-superlink`` as a child process group on this host.

    With a CA, each SuperLink gets its own TLS certificate and admits only SuperNodes whose
    public keys were registered for its run (Flower's SuperNode authentication).
    """

    def __init__(self, bind_host: str = "127.0.0.1", advertised_host: str | None = None,
                 ca: CertificateAuthority | None = None) -> None:
        self.bind_host = bind_host
        self.advertised_host = advertised_host or bind_host
        self.ca = ca

    def _security_args(self, workdir: Path) -> tuple[list[str], Path | None]:
        if self.ca is None:
            return ["--insecure"], None
        hosts = sorted({self.advertised_host, "127.0.0.1", "localhost"} - {"0.0.0.0", "::", ""})
        cert, key = self.ca.issue("superlink", workdir / "tls", server_hosts=hosts)
        ca_file = workdir / "tls" / CA_CERT
        ca_file.write_bytes(self.ca.cert_pem)
        return ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(ca_file),
                "--enable-supernode-auth"], ca_file

    async def start(self, run_id: str, workdir: Path) -> SuperLinkHandle:
        """Start the SuperLink and wait until it accepts connections."""
        flwr_home = workdir / "superlink"
        flwr_home.mkdir(parents=True, exist_ok=True)
        port = free_port(self.bind_host)
        security, ca_file = self._security_args(workdir)
        log = open(workdir / "superlink.log", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [console_script("flower-superlink"), *security, "--host", self.bind_host, "--port", str(port),
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
                               flwr_home=flwr_home, process=process, ca_file=ca_file,
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
                ca_file = workdir / "tls" / CA_CERT
                return SuperLinkHandle(run_id=run_id, address=address, flwr_home=flwr_home, process=None,
                                       ca_file=ca_file if ca_file.exists() else None,
                                       extra={"local_address": f"{local}:{port}", "pid": str(pid)})
        return None

