"""A spare ClientApp template, started before its run: the first round does not wait for torch.

A run's template (``template.py``) is forked by its SuperExec when the run starts, and imports the
app's frameworks then. On the 2-core bench the three agents' templates import torch and
scikit-learn at once, and round 1's train messages waited 5 to 8 s for them (the
``round_overhead.py`` bench, "k" row). The agent therefore keeps a *spare* per task it was selected
for (``fedops_agent/spares.py``): a process that has imported the same modules before the run, in
its own process group, listening on a Unix socket. The run's SuperExec (``executor.py``) finds the
socket's path in ``FEDOPS_WARM_SPARE``, connects, and hands the spare its environment (the run's
``FLWR_HOME`` and settings) and its standard output and error (the run's log), passed as file
descriptors; from then on the spare is the run's template, and its tasks are forked from it exactly
as from a template the SuperExec forked itself.

One spare serves one run: it accepts one connection and exits when that closes, like any template.
The agent stops its process group with the run's SuperNode (a hard stop leaves no process of it).

Protocol: the spare writes ``ready`` next to its socket once its imports are done; the SuperExec
sends one byte with the two descriptors, then one JSON line ``{"env": {...}}``; the spare answers
``{"ready": true, "pid": N}`` and then serves fork requests (``template.loop``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from setproctitle import setproctitle

from fedops_common.runconfig import WARM_SPARE_ENV, WARM_SPARE_READY_SUFFIX
from fedops_flower.warmapps import template

SPARE_ENV = WARM_SPARE_ENV  # the run's SuperExec: the socket of the spare to adopt
COMMAND = "flwr-clientapp"
READY_SUFFIX = WARM_SPARE_READY_SUFFIX
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def ready_file(socket_path: Path) -> Path:
    """The file the spare writes once it has imported everything (the agent and the bench wait on it)."""
    return socket_path.with_name(socket_path.name + READY_SUFFIX)


def serve(socket_path: Path) -> NoReturn:
    """Be a spare (in a process of its own group, with the task's ``FEDOPS_WARM_IMPORTS`` and
    ``FEDOPS_WARM_LEARNED`` set): listen first, so a run that starts during the imports queues
    its connection, import, then serve the one run that connects. Never returns."""
    code = 0
    try:
        template.reset_inherited_handlers()
        _die_with_parent(True)  # an agent killed outright leaves no spare behind (its fork server exits)
        setproctitle(f"fedops-warm-spare {COMMAND} {socket_path}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_path))
        listener.listen(1)
        entry = template.prepare(COMMAND)
        ready_file(socket_path).write_text(str(os.getpid()), encoding="utf-8")
        conn, _ = listener.accept()
        listener.close()
        _die_with_parent(False)  # the run's template now: it ends with the run's SuperExec, as any template
        _adopt_run(conn)
        template.send(conn, {"ready": True, "pid": os.getpid()})
        template.loop(conn, COMMAND, entry)
    except BaseException:  # noqa: B036  # the spare must end here, never in the fork server's code
        traceback.print_exc()
        code = 1
    finally:
        for path in (socket_path, ready_file(socket_path)):
            try:
                path.unlink()
            except OSError:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _die_with_parent(on: bool) -> None:
    """Linux's parent-death signal: SIGKILL when the agent's fork server (this process's parent) exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL if on else 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the agent's stop still stops the spare
    if on and os.getppid() == 1:  # the parent exited before the signal was armed
        os._exit(0)


def _adopt_run(conn: socket.socket) -> None:
    """Take the run's standard output and error and its environment (what a template forked by the
    run's SuperExec would have inherited)."""
    _, fds, _, _ = socket.recv_fds(conn, 1, 2)
    if len(fds) != 2:
        raise RuntimeError(f"the run's SuperExec passed {len(fds)} descriptors, not 2")
    sys.stdout.flush()
    sys.stderr.flush()
    prepared = _own_log()
    for target, fd in zip((1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    line = conn.makefile("rb").readline()
    env = json.loads(line)["env"]
    os.environ.clear()
    os.environ.update(env)
    setproctitle(f"{template.home_title()}fedops-warm-template {COMMAND}")
    # What it imported while it waited, in the run's log too (it wrote that to the agent's spare log).
    for said in prepared:
        print(f"{said} (as a spare)", file=sys.stderr)
    print(f"fedops warm apps: spare template {os.getpid()} adopted by the run", file=sys.stderr, flush=True)


def _own_log() -> list[str]:
    """The lines this spare wrote about its imports to its log (the agent's ``spare-N.log``)."""
    try:
        with open("/proc/self/fd/2", encoding="utf-8", errors="replace") as log:
            text = log.read()
    except OSError:
        return []
    mine = f"template {os.getpid()} "
    return [line for line in text.splitlines() if line.startswith("fedops warm apps: ") and mine in line]


def connect(socket_path: str, timeout_s: float) -> socket.socket:
    """The SuperExec's end: connect to the spare and hand it this process's environment and output.
    The caller reads the spare's ready answer (it comes once the spare's imports are done)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout_s)
    try:
        conn.connect(socket_path)
        socket.send_fds(conn, [b"\0"], [1, 2])
        conn.sendall(json.dumps({"env": dict(os.environ)}).encode() + b"\n")
    except OSError:
        conn.close()
        raise
    return conn
