"""Where a run's Flower SuperLink lives: the launcher interface, and the local-process launcher.

Callers (the run manager, the Control API calls) see a handle's addresses and CA only, and ask the
launcher whether the SuperLink is alive and to stop it: how it runs is the launcher's business. So is
how the run's ServerApp reaches the control service (:class:`ControlRoute`): the run manager says how
a process on its own host does, the launcher says what the ServerApp is told instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME

from fedops_common import runconfig as keys
from fedops_common.ca import CA_CERT, CertificateAuthority
from fedops_common.net import free_port, wait_for_port
from fedops_common.proc import (
    console_script,
    flower_env,
    pid_alive,
    scan_processes,
    stop_group_by_pid,
    stop_process_group,
)
from fedops_control.run.superexec import warm_superexec_env

LOOPBACK = "127.0.0.1"
GATEWAY_MODULE = "fedops_control.run.fleet_gateway"
SUPERLINK_MODULE = "fedops_flower.warmapps.superlink"  # run by name: no import across roles
MAX_FRAMEWORKS = 8  # imported by warm ServerApp templates: torch alone is about 0.8 GB resident


@dataclass
class SuperLinkHandle:
    """A running SuperLink: the address agents use, the address of its Control API, its TLS CA."""

    run_id: str
    address: str                 # host:port agents reach the run's Fleet API on (its gateway)
    control_address: str         # host:port this service reaches the run's Control API on
    ca_file: Path | None = None  # CA of the SuperLink's TLS certificate; None = plaintext, no node auth
    # The launcher's own: the local launcher's process (or the pid of an adopted one) and Flower home.
    flwr_home: Path = field(default=Path(), repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int = field(default=0, repr=False)
    where: str = ""  # the Kubernetes launcher's: the run's namespace

    @property
    def root_certificates(self) -> bytes:
        """The CA PEM agents verify the SuperLink with (b'' when plaintext)."""
        return self.ca_file.read_bytes() if self.ca_file else b""


@dataclass(frozen=True)
class ControlRoute:
    """How a run's Flower apps reach the control service for that run: what their run config says
    (the keys of :mod:`fedops_common.runconfig`). Paths are where the apps run; '' = not used."""

    address: str               # host:port of the control service (or of something forwarding to it)
    credential_file: str = ""  # the run's token, sent by the app ('' = none: no auth, or the route adds it)
    ca_file: str = ""          # the CA the app verifies the address with ('' = plaintext)
    cert_file: str = ""        # the client certificate and key the app presents, under mutual TLS
    key_file: str = ""

    def run_config(self) -> dict[str, str]:
        """The run-config entries (``fedops_common.runconfig`` keys) that tell the app this route."""
        return {keys.CONTROL_ADDRESS: self.address, keys.CREDENTIAL_FILE: self.credential_file,
                keys.TLS_CA_FILE: self.ca_file, keys.TLS_CERT_FILE: self.cert_file, keys.TLS_KEY_FILE: self.key_file}


class SuperLinkLauncher(Protocol):
    """Starts and stops the SuperLink of one run."""

    async def open(self) -> None:
        """Prepare what is kept between runs (a warm spare SuperLink), after a restart too."""
        ...

    async def close(self) -> None:
        """Release what :meth:`open` prepared; runs' SuperLinks are left alone."""
        ...

    async def start(self, run_id: str, workdir: Path, control: ControlRoute) -> SuperLinkHandle:
        """Start the run's SuperLink. ``control``: how a process on this service's host reaches the
        service for this run (its address, TLS files, the run's token file); with it the launcher
        makes the route of :meth:`app_route` work (a launcher running apps elsewhere forwards)."""
        ...

    def app_route(self, control: ControlRoute) -> ControlRoute:
        """How the run's ServerApp reaches the control service, given ``control`` (as passed to
        :meth:`start`): what its run config says. Pure, and called while :meth:`start` runs."""
        ...

    async def stop(self, handle: SuperLinkHandle) -> None: ...

    def abandon(self, run_id: str) -> None:
        """The run was stopped while :meth:`start` was still waiting for its SuperLink: make that
        start give up now (it cleans up and raises) rather than wait out its own timeout. A no-op
        when no start of ``run_id`` is waiting."""
        ...

    def is_alive(self, handle: SuperLinkHandle) -> bool:
        """Whether the run's SuperLink still runs."""
        ...

    def why_down(self, handle: SuperLinkHandle) -> str:
        """Once :meth:`is_alive` is False: what happened, in plain words (the run's failure reason)."""
        ...

    def adopt(self, run_id: str, workdir: Path, address: str) -> SuperLinkHandle | None:
        """Find the SuperLink of a run started before this control service restarted (None if gone)."""
        ...

    def expect_frameworks(self, frameworks: list[str]) -> None:
        """The import names of the frameworks of the app a run is starting (a hint: a launcher that
        keeps processes warm may import them ahead of the next run)."""
        ...


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalProcessLauncher:
    """Runs ``flower-superlink`` on this host, always bound to loopback.

    Flower serves its Fleet, Control and Runtime APIs on one port, so when agents come from other
    hosts (``bind_host`` is not loopback) they reach the SuperLink through its Fleet gateway
    (:mod:`fedops_control.run.fleet_gateway`), the only listener on ``bind_host``, which forwards
    the Fleet API and nothing else. The gateway is then the group leader and runs the SuperLink as
    its child. With a CA, each SuperLink gets its own TLS certificate (served by the gateway too)
    and admits only SuperNodes whose public keys were registered for its run (Flower's SuperNode
    authentication).

    With ``spare_dir``, one SuperLink is kept started ahead of need (a warm spare, in
    ``spare_dir/spare-*``): :meth:`start` hands it to the next run, whose workdir then links to it,
    and a new spare is started once a run's SuperLink is stopped. Starting a SuperLink takes about
    2 s, all of it before the run can be submitted.
    """

    def __init__(self, bind_host: str = LOOPBACK, advertised_host: str | None = None,
                 ca: CertificateAuthority | None = None, spare_dir: Path | None = None,
                 warm_apps: bool = False, state_on_disk: bool = False) -> None:
        self.bind_host = bind_host
        self.state_on_disk = state_on_disk  # see superlink_database()
        self.advertised_host = advertised_host or bind_host
        self.ca = ca
        self.spare_dir = spare_dir
        self.warm_apps = warm_apps  # ServerApps forked from a warm template (run/superexec.py)
        self.frameworks: list[str] = []  # what the next SuperLink's ServerApp template imports
        self._spare: asyncio.Task[SuperLinkHandle] | None = None
        self._closed = False

    @property
    def gateway(self) -> bool:
        """Whether SuperLinks sit behind a Fleet gateway (agents on other hosts)."""
        return not is_loopback(self.bind_host)

    def _security_args(self, workdir: Path) -> tuple[list[str], list[str], Path | None]:
        """The SuperLink's TLS flags, its gateway's, and the CA agents verify both with."""
        if self.ca is None:
            return ["--insecure"], [], None
        hosts = sorted({self.advertised_host, LOOPBACK, "localhost"} - {"0.0.0.0", "::", ""})
        cert, key = self.ca.issue("superlink", workdir / "tls", server_hosts=hosts)
        ca_file = workdir / "tls" / CA_CERT
        ca_file.write_bytes(self.ca.cert_pem)
        tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        return ([*tls, "--ssl-ca-certfile", str(ca_file), "--enable-supernode-auth"],
                [*tls, "--ca-file", str(ca_file)], ca_file)

    async def open(self) -> None:
        """Stop spares left by an earlier process of this service, then start one."""
        if self.spare_dir is None:
            return
        for leftover in self.spare_dir.glob("spare-*"):
            if not (leftover / CLAIMED_BY).exists():
                await asyncio.to_thread(_stop_spare, leftover)
        self._warm_up()

    async def close(self) -> None:
        """Stop the spare nobody claimed."""
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None:
            await self._stop_unclaimed(spare)

    def expect_frameworks(self, frameworks: list[str]) -> None:
        """With warm ServerApps: SuperLinks started from now on have ``frameworks`` imported in their
        ServerApp template, besides those of the apps expected before (the last
        ``MAX_FRAMEWORKS``). A spare waiting without them is replaced by one that has them: the
        run that takes it would otherwise import them itself, on its critical path."""
        new = [name for name in frameworks if name not in self.frameworks]
        if not self.warm_apps or not new:
            return
        self.frameworks = (self.frameworks + new)[-MAX_FRAMEWORKS:]
        if self._spare is not None:  # none while a run holds the last one: its successor starts later
            old, self._spare = self._spare, None
            self._warm_up()
            asyncio.get_running_loop().create_task(self._stop_unclaimed(old))

    async def _stop_unclaimed(self, spare: asyncio.Task[SuperLinkHandle]) -> None:
        with contextlib.suppress(Exception):  # one that failed to start has nothing left to stop
            handle = await spare
            await asyncio.to_thread(_stop_spare, handle.flwr_home.parent, handle.process)

    def _warm_up(self) -> None:
        if self.spare_dir is not None and self._spare is None and not self._closed:
            self._spare = asyncio.create_task(self._launch(f"spare-{uuid.uuid4().hex[:12]}", None))

    async def start(self, run_id: str, workdir: Path, control: ControlRoute) -> SuperLinkHandle:
        """The run's SuperLink: the warm spare if there is one (its directories linked into
        ``workdir``), else a new one. Returns once agents can connect. ``control`` needs nothing
        done: the ServerApp runs on this host (:meth:`app_route`)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                handle: SuperLinkHandle | None = await spare
            except Exception:  # a spare that failed to start (its log says why): start one now
                handle = None
            if handle is not None and self.is_alive(handle):
                return _claim(handle, run_id, workdir)
            if handle is not None:
                await asyncio.to_thread(_stop_spare, handle.flwr_home.parent, handle.process)
        return await self._launch(run_id, workdir)

    async def _launch(self, run_id: str, workdir: Path | None) -> SuperLinkHandle:
        """Start a SuperLink (behind its Fleet gateway when agents are remote) in ``workdir``, or
        as a spare when ``workdir`` is None; wait until agents can connect."""
        if workdir is None:
            assert self.spare_dir is not None
            workdir = self.spare_dir / run_id
        flwr_home = workdir / "superlink"
        flwr_home.mkdir(parents=True, exist_ok=True)
        superlink_tls, gateway_tls, ca_file = self._security_args(workdir)
        internal_port = free_port(LOOPBACK)
        # Its imports frozen (fedops_common.heap): a full collection no longer stalls it 0.1 s
        # in a phase; it wakes its ServerApp's Grid when a reply arrives, its one-API middlewares
        # skip the other APIs' requests and (state in memory) its request steps run on its event loop
        # (fedops_flower/warmapps/gridwake.py, gates.py, inline.py); its command line still names
        # flower-superlink for the process scans.
        command = [sys.executable, "-m", SUPERLINK_MODULE, console_script("flower-superlink"), *superlink_tls,
                   "--host", LOOPBACK, "--port", str(internal_port),
                   "--database", superlink_database(flwr_home, self.state_on_disk),
                   "--disable-runtime-dependency-installation"]
        port, listen = internal_port, LOOPBACK
        if self.gateway:
            port = free_port(self.bind_host)
            listen = LOOPBACK if self.bind_host in ("0.0.0.0", "::") else self.bind_host
            command = [sys.executable, "-m", GATEWAY_MODULE, "--host", self.bind_host, "--port", str(port),
                       "--upstream-port", str(internal_port), *gateway_tls, "--", *command]
        log = open(workdir / "superlink.log", "ab")
        env = flower_env(flwr_home)
        if self.warm_apps:
            env = warm_superexec_env(env, workdir, self.frameworks)
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        try:
            await asyncio.to_thread(wait_for_port, listen, port, 60.0)
        except TimeoutError:
            stop_process_group(process, detached=True)
            raise
        return SuperLinkHandle(run_id=run_id, address=f"{self.advertised_host}:{port}",
                               control_address=f"{LOOPBACK}:{internal_port}", ca_file=ca_file,
                               flwr_home=flwr_home, process=process)

    def app_route(self, control: ControlRoute) -> ControlRoute:
        """The ServerApp is a process on this host, the SuperLink's child: it reaches the service as
        any local process does, with the run's token file and the service's own TLS files."""
        return control

    async def stop(self, handle: SuperLinkHandle) -> None:
        """Stop the SuperLink, its gateway, its SuperExec and every ServerApp process (the SuperLink's
        group and the session Flower starts its SuperExec in); then warm up the next spare (not
        earlier: a spare starting beside a run slows the run)."""
        if handle.process is not None:
            await asyncio.to_thread(stop_process_group, handle.process, detached=True)
        elif handle.pid:
            await asyncio.to_thread(stop_group_by_pid, handle.pid, detached=True)
        # And whatever still names its directory: processes no longer under the SuperLink when the
        # groups were read (an adopted SuperLink that died: its SuperExec's ServerApp template is an
        # orphan, found only by its title's FLWR_HOME).
        await asyncio.to_thread(_stop_naming, handle.flwr_home.parent)
        self._warm_up()

    def abandon(self, run_id: str) -> None:
        """Nothing to interrupt: a local start ends by itself within seconds (the port answers or
        the process failed), and the run manager then stops the SuperLink of a stopped run."""

    def is_alive(self, handle: SuperLinkHandle) -> bool:
        """Its process (or, adopted after a restart, its pid) is still running."""
        return handle.process.poll() is None if handle.process is not None else pid_alive(handle.pid)

    def why_down(self, handle: SuperLinkHandle) -> str:
        """A local SuperLink that is gone has exited (its log in the run's workdir says why)."""
        return "SuperLink process exited"

    def adopt(self, run_id: str, workdir: Path, address: str) -> SuperLinkHandle | None:
        """The process group of ``run_id``'s SuperLink, found by its ``FLWR_HOME`` (the run's
        workdir, or the spare directory it links to)."""
        flwr_home = (workdir / "superlink").resolve()
        found = [(pid, cmdline) for pid, proc, cmdline in scan_processes()
                 if (GATEWAY_MODULE.encode() in cmdline or b"flower-superlink" in cmdline)
                 and flwr_home_of(proc) == flwr_home]
        # The gateway, when there is one, leads the group; its command line holds the SuperLink's too.
        found.sort(key=lambda item: GATEWAY_MODULE.encode() not in item[1])
        for pid, cmdline in found[:1]:
            flag = b"--upstream-port\0" if GATEWAY_MODULE.encode() in cmdline else b"--port\0"
            internal_port = cmdline.split(flag, 1)[1].split(b"\0", 1)[0].decode()
            ca_file = workdir / "tls" / CA_CERT
            return SuperLinkHandle(run_id=run_id, address=address, control_address=f"{LOOPBACK}:{internal_port}",
                                   ca_file=ca_file if ca_file.exists() else None, flwr_home=flwr_home, pid=pid)
        return None


def superlink_database(flwr_home: Path, on_disk: bool) -> str:
    """The SuperLink's ``--database``: Flower's in-memory state (its own default), or a SQLite file.

    A SuperLink serves one run and ends with it, so nothing in its state has to outlive the
    process. On disk, every message, every object of it (Flower moves a message as some ten objects,
    each its own request) and every node's poll is a SQLite transaction in the SuperLink's one
    process; in the issue-16 bench (numpy app, 3 SuperNodes, 2 cores) that doubled the median phase
    overhead: 0.95-1.20 s on disk, 0.46-0.65 s in memory. On disk the messages' arrays wait on disk
    rather than in RAM, for models too large to hold a phase's replies in memory
    (``fedops-control --superlink-state-on-disk``)."""
    return str(flwr_home / "state.db") if on_disk else FLWR_IN_MEMORY_DB_NAME


def flwr_home_of(proc: Path) -> Path | None:
    """The resolved ``FLWR_HOME`` in the environment of the process at ``proc`` (a /proc entry)."""
    try:
        environ = (proc / "environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"FLWR_HOME="):
            return Path(entry[len(b"FLWR_HOME="):].decode(errors="replace")).resolve()
    return None


CLAIMED_BY = "claimed-by"  # in a spare's directory: the run that took it (a left spare without it is stopped)


def _claim(handle: SuperLinkHandle, run_id: str, workdir: Path) -> SuperLinkHandle:
    """Give a spare to ``run_id``: its workdir gets links to the spare's home, TLS files and log."""
    spare_dir = handle.flwr_home.parent
    (spare_dir / CLAIMED_BY).write_text(run_id)
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("superlink", "tls", "superlink.log"):
        if (spare_dir / name).exists():
            (workdir / name).symlink_to(spare_dir / name)
    handle.run_id = run_id
    return handle


def _stop_spare(directory: Path, process: subprocess.Popen[bytes] | None = None) -> None:
    """Stop an unclaimed spare (its group, or the process groups whose command line names its
    ``directory``), then delete the directory."""
    if process is not None:
        stop_process_group(process, detached=True)
    _stop_naming(directory)
    shutil.rmtree(directory, ignore_errors=True)


def _stop_naming(directory: Path) -> None:
    """Stop the process groups of every process whose command line names ``directory`` or whose
    ``FLWR_HOME`` lies in it (a SuperLink with in-memory state and no TLS names no file there)."""
    marker, resolved = f"{directory}{os.sep}".encode(), directory.resolve()
    groups = set()
    for pid, proc, cmdline in scan_processes():
        if marker in cmdline or ((home := flwr_home_of(proc)) is not None and home.is_relative_to(resolved)):
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
    for group in groups - {os.getpgid(0)}:  # never our own group
        stop_group_by_pid(group)
