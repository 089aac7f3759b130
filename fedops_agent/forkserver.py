"""Start a run's SuperNode and its SuperExec as forks of a process that has already imported Flower.

Importing Flower's SuperNode or SuperExec code costs about 1.2 CPU-seconds, and each run starts both
processes: on a small device that is most of the time between ``StartRun`` and the first round. The
agent pays the import once, when it starts, in the standard library's ``forkserver`` with Flower
preloaded; each run's SuperNode is a fork of it, and the SuperNode forks its own SuperExec (Flower's
``--isolation process``). What runs is Flower's own console-script code with the same arguments, and
the process title reads as the command line would (``FLWR_HOME=... flower-supernode ...``), so ``ps``
and the process scans that find a run's Flower processes by their command line still work.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from multiprocessing import connection, forkserver
from multiprocessing.context import ForkServerProcess
from pathlib import Path

from setproctitle import setproctitle

from fedops_common import heap
from fedops_common.net import accepts_connections
from fedops_common.proc import FLOWER_SETTINGS

# What a SuperNode and its SuperExec import; "__main__" (the agent's script) too, or every fork
# would import it again to prepare itself.
PRELOAD = ["__main__", "flwr.supernode.cli", "flwr.supercore.cli",
           # What they import only once they run: the HTTP client stack of the SuperNode's and the
           # SuperExec's first request, and the server stack of the SuperNode's app API. A profile of
           # the bench's SuperNodes (py-spy) found these imports in every run's start, 0.1 to 0.3 s
           # of CPU each while three agents started theirs at once; a module missing here is skipped.
           "httpx", "httpcore", "h11", "anyio._backends._asyncio", "uvicorn.config", "uvicorn.lifespan.on",
           "uvicorn.loops.auto", "uvicorn.protocols.http.auto", "uvicorn.protocols.websockets.auto"]
# With warm apps, each run's SuperExec forks a ClientApp template that imports our wrapper: preloaded
# here, the template is ready in milliseconds instead of importing grpc and the stubs again.
PRELOAD_WARM_APPS = ["fedops_flower.warmapps.executor", "fedops_flower.warmapps.pull",
                     "fedops_flower.warmapps.objectpull", "fedops_flower.warmapps.spare",
                     "fedops_flower.warmapps.wake",
                     "fedops_flower.clientapp.app"]
_CONTEXT = multiprocessing.get_context("forkserver")


def warm(warm_apps: bool = True) -> None:
    """Start the fork server, which imports Flower in the background (once per agent process).

    Returns at once; a :func:`start_supernode` before the import is done waits for it. Flower reads
    some settings (telemetry) at import time, so they go into this process's environment first: the
    fork server inherits it.
    """
    os.environ.update(FLOWER_SETTINGS)
    _CONTEXT.set_forkserver_preload(PRELOAD + (PRELOAD_WARM_APPS if warm_apps else []))
    forkserver.ensure_running()


class ForkedProcess:
    """A forked Flower process, with the parts of :class:`subprocess.Popen` the agent uses."""

    def __init__(self, process: ForkServerProcess, args: list[str]) -> None:
        self._process = process
        self.args = args
        # The exit code comes once through a pipe: two threads reading it (the agent's supervisor
        # waits while a stop polls) would leave one with a false 255.
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """Its pid (it leads its own session and process group)."""
        assert self._process.pid is not None
        return self._process.pid

    def poll(self) -> int | None:
        """Exit code (negative for a signal) if it has exited, else None."""
        with self._lock:
            return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to exit; raises :class:`subprocess.TimeoutExpired` after ``timeout``."""
        connection.wait([self._process.sentinel], timeout)  # readable once it exits; reads nothing
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code


def start_supernode(supernode_args: list[str], runtime_port: int, superexec_args: list[str],
                    env: dict[str, str], log_path: Path, warm_apps: bool = False) -> ForkedProcess:
    """Fork ``flower-supernode *supernode_args`` (which must include ``--isolation process`` and
    ``--port runtime_port``) with its SuperExec, ``flower-superexec *superexec_args``, in one new
    process group; both write to ``log_path`` and see exactly ``env``. With ``warm_apps`` the
    SuperExec forks its ClientApps from a warm template (``fedops_flower.warmapps``)."""
    process = _CONTEXT.Process(target=_supernode_main, name="flower-supernode",
                               args=(supernode_args, runtime_port, superexec_args, env, str(log_path), warm_apps))
    process.start()
    _wait_until_group_leader(process)
    return ForkedProcess(process, ["flower-supernode", *supernode_args])


def start_spare(socket_path: Path, env: dict[str, str], log_path: Path) -> ForkedProcess:
    """Fork a spare ClientApp template (``fedops_flower.warmapps.spare``) in a new process group: it
    imports what ``env`` names (``FEDOPS_WARM_IMPORTS``, ``FEDOPS_WARM_LEARNED``), then waits on
    ``socket_path`` for the run whose SuperExec adopts it; it writes to ``log_path`` until then."""
    process = _CONTEXT.Process(target=_spare_main, name="fedops-warm-spare",
                               args=(str(socket_path), env, str(log_path)))
    process.start()
    _wait_until_group_leader(process)
    return ForkedProcess(process, ["fedops-warm-spare", str(socket_path)])


def _spare_main(socket_path: str, env: dict[str, str], log_path: str) -> None:
    """In the fork: lead a group of its own (a stop of the run's SuperNode stops this one too), then
    be the spare (which never returns)."""
    os.setsid()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.environ.update(env)
    # Every fork of the fork server holds the fd that keeps the fork server running while its agent
    # lives; a spare does not need it, and without it the fork server exits with a killed agent and
    # the spare with the fork server (its parent-death signal, spare.py).
    alive_fd = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_alive_fd", None)
    if isinstance(alive_fd, int):
        with contextlib.suppress(OSError):
            os.close(alive_fd)
    from fedops_flower.warmapps import spare

    spare.serve(Path(socket_path))


def _wait_until_group_leader(process: ForkServerProcess, timeout_s: float = 10.0) -> None:
    """Wait until the fork leads its own process group (its first step), or has exited.

    A stop signals the group: one sent before the fork's ``setsid`` finds no group, and the SuperNode
    then ran on, retrying a SuperLink that was gone (a hard stop right after a start left it, 20 times
    of 20). ``setsid`` comes within milliseconds of the fork."""
    assert process.pid is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.exitcode is None:
        try:
            if os.getpgid(process.pid) == process.pid:
                return
        except ProcessLookupError:
            return
        time.sleep(0.001)


def _supernode_main(supernode_args: list[str], runtime_port: int, superexec_args: list[str],
                    env: dict[str, str], log_path: str, warm_apps: bool = False) -> None:
    """In the fork: become the group leader, then the SuperNode; fork the SuperExec beside it."""
    os.setsid()
    # The title first: setproctitle needs the environment as exec left it.
    _become("flower-supernode", supernode_args, env["FLWR_HOME"])
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.environ.clear()
    os.environ.update(env)
    wake_r, wake_w = -1, -1
    if warm_apps:
        from fedops_flower.warmapps import wake

        wake_r, wake_w = wake.pipe()
    if os.fork() == 0:
        if wake_w >= 0:
            os.close(wake_w)
        _superexec_main(superexec_args, runtime_port, supernode_pid=os.getppid(), flwr_home=env["FLWR_HOME"],
                        warm_apps=warm_apps, wake_fd=wake_r)
    from flwr.supernode.cli import flower_supernode

    if warm_apps:
        # Fast rounds: the SuperNode's 3 s pull sleep and 0.5 s reply check shortened while its
        # run is active (fedops_flower.warmapps.pull says what and why), and its SuperExec woken
        # when a message is stored (fedops_flower.warmapps.wake).
        from fedops_flower.warmapps import inline, objectpull, pull

        os.close(wake_r)
        clock = pull.install(on_message=lambda: wake.notify(wake_w))
        objectpull.install()  # it then pulls a message before the ServerApp has pushed its arrays
        if inline.install():  # its Runtime API's steps for the tasks (its state is in memory)
            print(inline.INSTALLED_MARK, file=sys.stderr, flush=True)
        print(f"{pull.INSTALLED_MARK}: {clock.active_pull_s} s for {clock.active_window_s:.0f} s after a message"
              if clock else f"{pull.NOT_INSTALLED_MARK}: the SuperNode loop is not the one expected",
              file=sys.stderr, flush=True)
    heap.freeze()  # the fork server's preloaded modules (fedops_common.heap)
    flower_supernode()


def _superexec_main(superexec_args: list[str], runtime_port: int, supernode_pid: int, flwr_home: str,
                    warm_apps: bool = False, wake_fd: int = -1) -> None:
    """In the SuperNode's fork: wait for its Runtime API (Flower's SuperExec backs off for seconds
    between connection attempts), then run the SuperExec; it exits with the SuperNode (``--parent-pid``)."""
    code = 0
    try:
        while os.getppid() == supernode_pid and not accepts_connections("127.0.0.1", runtime_port):
            time.sleep(0.05)
        if os.getppid() == supernode_pid:
            from flwr.supercore.cli import flower_superexec

            _become("flower-superexec", [*superexec_args, "--parent-pid", str(supernode_pid)], flwr_home)
            if warm_apps:
                from fedops_flower.warmapps import wake
                from fedops_flower.warmapps.executor import install

                if wake_fd >= 0 and wake.install(wake_fd):
                    print(f"{wake.INSTALLED_MARK} (fallback poll {wake.FALLBACK_POLL_S} s)", file=sys.stderr,
                          flush=True)
                install()
            heap.freeze()
            flower_superexec()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never return into the fork server's code


def _become(script: str, args: list[str], flwr_home: str) -> None:
    """Look like ``script *args`` to Flower's argument parser, and like ``FLWR_HOME=... script *args``
    to process listings: /proc/PID/environ no longer shows the environment after a fork and a new
    title, and scans for a run's Flower processes look for its directory there."""
    sys.argv = [script, *args]
    setproctitle(" ".join([f"FLWR_HOME={flwr_home}", *sys.argv]))

