"""Child processes: finding console scripts, Flower's environment, finding and stopping processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import psutil


def console_script(name: str) -> str:
    """Path of a console script in this interpreter's environment (else the bare name, via PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# Flower's switches for every Flower process we start: no telemetry, no update checks, logs unbuffered.
# FLWR_SUPEREXEC_TASK_POLL_INTERVAL: a SuperExec asks its SuperNode (or SuperLink) for a new task
# every second by default, so every ClientApp message and every ServerApp start waited 0.5 s on
# average before its process was even started. At 0.1 s a poll is one local HTTP request.
FLOWER_SETTINGS = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
                   "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for any Flower process: own FLWR_HOME, no telemetry, no update checks, and this
    environment's scripts first on PATH (the SuperLink and SuperNode start `flower-superexec` by name,
    so an unactivated virtualenv must still be found)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        path = os.pathsep.join([bin_dir, path]) if path else bin_dir
    return {**os.environ, **FLOWER_SETTINGS, "PATH": path, "FLWR_HOME": str(flwr_home)}


def _killpg(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class ChildProcess(Protocol):
    """What :func:`stop_process_group` needs of a child: :class:`subprocess.Popen` has it."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def detached_groups(pid: int) -> set[int]:
    """Process groups of ``pid``'s descendants that left its group. Flower's SuperLink starts its
    SuperExec in a session of its own, with the ServerApp template and the ServerApps under it: a
    stop of the SuperLink's group alone left them to Flower's parent watch, which once took over
    30 s to end them after a hard stop. Read them before any signal: once the leader is gone they
    are orphans, no longer found from it."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return set()
    groups = set()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(child.pid))
    return groups - {pid, os.getpgid(0)}  # never our own group


def stop_process_group(process: ChildProcess, hard: bool = False, grace_s: float = 5.0,
                       detached: bool = False) -> None:
    """Signal the process's group (SIGTERM, or SIGKILL when hard), SIGKILL it after ``grace_s``,
    then SIGKILL whatever of the group outlived its leader: no strays. With ``detached``, the groups
    its descendants started (:func:`detached_groups`) get the same signals and grace."""
    groups = detached_groups(process.pid) if detached and process.poll() is None else set()
    first = signal.SIGKILL if hard else signal.SIGTERM
    deadline = time.monotonic() + grace_s
    for group in groups:
        _killpg(group, first)
    if process.poll() is None and _killpg(process.pid, first):
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_s)
    _killpg(process.pid, signal.SIGKILL)
    _end_groups(groups, deadline)


def _end_groups(groups: set[int], deadline: float) -> None:
    """Wait until ``deadline`` for ``groups`` to be empty (they were signalled), then SIGKILL them."""
    while groups and time.monotonic() < deadline:
        groups = {group for group in groups if _killpg(group, 0)}
        time.sleep(0.05)
    for group in groups:
        _killpg(group, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_group_by_pid(pid: int, grace_s: float = 5.0, detached: bool = False) -> None:
    """:func:`stop_process_group` for a group leader we did not start (no Popen): SIGTERM, then SIGKILL."""
    groups = detached_groups(pid) if detached else set()
    deadline = time.monotonic() + grace_s
    for group in groups:
        _killpg(group, signal.SIGTERM)
    if _killpg(pid, signal.SIGTERM):
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        _killpg(pid, signal.SIGKILL)
    _end_groups(groups, deadline)


def scan_processes() -> Iterator[tuple[int, Path, bytes]]:
    """(pid, /proc dir, raw NUL-separated command line) of every readable process but this one."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            yield int(proc.name), proc, (proc / "cmdline").read_bytes()
        except OSError:
            continue


async def until_stop_signal() -> None:
    """Return on SIGINT or SIGTERM: a service's main coroutine awaits this, then shuts down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
