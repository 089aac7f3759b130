"""The template process: imports once, then forks one process per task.

A new ``flwr-clientapp`` process imports Flower's ClientApp runtime, our wrapper and its gRPC
stack, then the app and its framework (torch alone is about 2 CPU-seconds), for every message.
The template pays the first part when the run's SuperExec starts (while the SuperNode joins), with
the app's frameworks (the import names of its declared dependencies, which the agent passes in
``FEDOPS_WARM_IMPORTS``); the app's own modules come with its FAB in the first message, so the first
task of a run reports back what it imported and from where, and the template imports the same
modules, so every later task starts with them in memory. The library modules among them (not the
app's own, which a later run may bring changed) are kept in a file per task on the agent
(``FEDOPS_WARM_LEARNED``), and a template of the task's next run imports them before it is ready:
on the digits app that is scikit-learn's and torch's submodules, 3.3 s of the first round's
handlers, which the first round of every later run no longer pays.

Each task is still its own process, forked from a template that never ran the app's code, so no
module-level state of one message reaches the next, and a task that crashes (``os._exit``, a
segfault) takes only itself down. The template stays in the SuperNode's process group, so a stop
of the run's group stops it and its tasks like any other process of the run.

Protocol on the socket (one JSON line each way per task): ``{"argv": [...], "quiet": bool}``
→ ``{"pid": N}`` or ``{"error": "..."}``. The template exits when the socket closes
(its SuperExec is gone).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from setproctitle import setproctitle

from fedops_common import heap
from fedops_common.runconfig import WARM_FORK_ENV, WARM_IMPORTS_ENV, WARM_LEARNED_ENV
from fedops_flower.warmapps import fabcache, flowerevents, objectpull

# What the template imports before it says it is ready, by task type: Flower's entry point for the
# task and our wrapper (with grpc, structlog and the generated stubs it imports).
ENTRY_POINTS = {
    "flwr-clientapp": ("flwr.supernode.cli", "flwr_clientapp", "fedops_flower.clientapp.app"),
    "flwr-serverapp": ("flwr.superlink.cli", "flwr_serverapp", "fedops_flower.serverapp.app"),
}
_SKIPPED_PREFIXES = ("__main__", "__mp_main__", "_pytest", "pytest")


def serve(sock: socket.socket, command: str) -> NoReturn:
    """Run the template on ``sock`` (in a fresh fork of the SuperExec); never returns."""
    code = 0
    try:
        reset_inherited_handlers()
        setproctitle(f"{home_title()}fedops-warm-template {command}")
        entry = prepare(command)
        send(sock, {"ready": True, "pid": os.getpid()})
        loop(sock, command, entry)
    except BaseException:  # noqa: B036  # the template must end here, never in the SuperExec's code
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def prepare(command: str) -> Callable[[], None]:
    """Import what every task of ``command`` needs (Flower's entry point, our wrapper, the app's
    frameworks and the modules learned in earlier runs); return the entry point."""
    module, function, wrapper = ENTRY_POINTS[command]
    entry: Callable[[], None] = getattr(importlib.import_module(module), function)
    importlib.import_module(wrapper)
    # Its tasks pull their message as soon as they start, from a local SuperNode or SuperLink.
    objectpull.install(backoff_cap_s=objectpull.LOCAL_BACKOFF_CAP_S)
    fabcache.install()  # the run's FAB unpacked and checked by its first task only
    flowerevents.install()  # no thread and `file` process per task for Flower's switched-off telemetry
    _import_frameworks(os.environ.get(WARM_IMPORTS_ENV, ""))
    _import_learned(os.environ.get(WARM_LEARNED_ENV, ""))
    heap.freeze()  # what every task inherits is never walked by a collection (fedops_common.heap)
    return entry


def _import_frameworks(names: str) -> None:
    """Import the app's frameworks (the agent's list, from the app's declared dependencies) before
    the run's first message: without them the first round's tasks import torch each, and the
    template learns it only when the first task has ended."""
    imported, failed = [], []
    for name in filter(None, names.split(",")):
        try:
            importlib.import_module(name)
            imported.append(name)
        except BaseException:  # noqa: B036  # a framework that cannot be imported here is imported (and fails) in the task
            failed.append(name)
    if imported or failed:
        print(f"fedops warm apps: template {os.getpid()} imported the app's frameworks {imported}"
              + (f", not {failed}" if failed else ""), file=sys.stderr, flush=True)


def _learned(path: str) -> list[str]:
    """The module names kept in ``path`` (:func:`_remember`); none when there is no such file yet (the
    task's first run here) or it is unreadable (they are learned again in this run)."""
    try:
        names = json.loads(open(path, encoding="utf-8").read())["modules"] if path else []
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def _import_learned(path: str) -> None:
    """Import the library modules earlier runs' first tasks of this app imported (:func:`_remember`)."""
    names = _learned(path)
    if not names:
        return
    imported = 0
    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            imported += 1
        except BaseException:  # noqa: B036  # a module that fails here is imported (and fails) in the task
            pass
    print(f"fedops warm apps: template {os.getpid()} imported {imported} modules learned in an earlier run",
          file=sys.stderr, flush=True)


def _remember(path: str, names: list[str], app_paths: list[str]) -> None:
    """Keep the library modules of ``names`` in ``path`` for the template of the task's next run,
    added to those kept before (a template that imported them from the file sees only the app's own
    modules in its first task: replacing the file would forget them every other run); written whole,
    then renamed into place. The app's own modules are those loaded from under the
    run's FLWR_HOME (where Flower installs the FAB), or else from ``app_paths``, the entries the task
    added to ``sys.path`` (these can hold the working directory, and a virtualenv under it)."""
    if not path:
        return
    home = os.environ.get("FLWR_HOME", "")
    app = (os.path.join(home, ""),) if home else tuple(os.path.join(entry, "") for entry in app_paths if entry)
    kept = _learned(path)
    known = set(kept)
    library = kept + [name for name in names if name not in known and name in sys.modules
                      and not name.startswith(_SKIPPED_PREFIXES)
                      and not str(getattr(sys.modules[name], "__file__", None) or "").startswith(app)]
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(f"{path}.{os.getpid()}", "w", encoding="utf-8") as out:
            json.dump({"modules": library}, out)
        os.replace(f"{path}.{os.getpid()}", path)
    except OSError as err:
        print(f"fedops warm apps: could not keep the learned modules in {path}: {err}", file=sys.stderr, flush=True)


def reset_inherited_handlers() -> None:
    """A template rebuilt mid-run is a fork of a SuperExec that registered Flower's exit and signal
    handlers (close its Runtime API client): its tasks must not run those."""
    from flwr.supercore.exit import exit_handler

    exit_handler.registered_exit_handlers.clear()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    atexit._clear()


def loop(sock: socket.socket, command: str, entry: Callable[[], None]) -> None:
    """Fork a task for each request on ``sock``, until it closes."""
    reader = sock.makefile("rb")
    learning: dict[int, bytearray] = {}  # read end of a learning task's pipe -> what it wrote so far
    warmed = False  # the app's modules are imported (learned from a task that ran to its end)
    while True:
        readable, _, _ = select.select([sock.fileno(), *learning], [], [], 0.5)
        _reap()
        for fd in readable:
            if fd == sock.fileno():
                line = reader.readline()  # the SuperExec waits for each answer: never a second line buffered
                if not line:
                    return  # the SuperExec is gone
                request = json.loads(line)
                learn_r, learn_w = os.pipe() if not warmed and not learning else (-1, -1)
                heap.freeze()  # with the modules learned since (fedops_common.heap)
                pid = os.fork()
                if pid == 0:
                    reader.close()
                    sock.close()
                    for other in learning:
                        os.close(other)
                    if learn_r >= 0:
                        os.close(learn_r)
                    _task(command, entry, request["argv"], bool(request.get("quiet")), learn_w)
                if learn_w >= 0:
                    os.close(learn_w)
                    learning[learn_r] = bytearray()
                send(sock, {"pid": pid})
            else:
                chunk = os.read(fd, 65536)
                if chunk:
                    learning[fd] += chunk
                    continue
                os.close(fd)
                warmed = _warm_up(bytes(learning.pop(fd))) or warmed


def home_title() -> str:
    """As the run's other Flower processes show it (``fedops_agent/forkserver.py``): scans for a run's
    processes look for its directory in their command lines."""
    home = os.environ.get("FLWR_HOME")
    return f"FLWR_HOME={home} " if home else ""


def send(sock: socket.socket, body: dict[str, Any]) -> None:
    sock.sendall(json.dumps(body).encode() + b"\n")


def _reap() -> None:
    """Collect exited tasks (and say which ended abnormally: a crash shows in the run's log)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSIGNALED(status):
            print(f"fedops warm apps: task process {pid} killed by signal {os.WTERMSIG(status)}",
                  file=sys.stderr, flush=True)
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) not in (0,):
            print(f"fedops warm apps: task process {pid} exited with code {os.WEXITSTATUS(status)}",
                  file=sys.stderr, flush=True)


def _reseed() -> None:
    """Fresh seeds for the global random generators the template imported, as a new process has: a
    fork inherits the template's state, so an app that draws from numpy's or torch's global
    generator without seeding it would draw the same numbers in every round (Python's ``random``
    reseeds itself after a fork). An app that seeds them itself sets its seed after this, as before."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # no argument: from the OS's entropy
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "seed"):
        torch.seed()  # a non-deterministic seed, as torch's start-up picks


def _task(command: str, entry: Callable[[], None], argv: list[str], quiet: bool, learn_w: int) -> NoReturn:
    """In the task's fork: run Flower's entry point as ``argv`` would, then exit with its code."""
    code = 0
    modules_before, path_before = set(sys.modules), list(sys.path)
    try:
        if quiet:  # what Flower's subprocess executor does for this task type
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
        sys.argv = [command, *argv]
        os.environ[WARM_FORK_ENV] = "1"
        _reseed()
        setproctitle(home_title() + " ".join(sys.argv))
        entry()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: B036  # a task must end here, never in the template's loop
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            if learn_w >= 0:
                learned = {"path": [p for p in sys.path if p not in path_before],
                           "modules": [m for m in list(sys.modules) if m not in modules_before]}
                os.write(learn_w, json.dumps(learned).encode())
                os.close(learn_w)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            _yield_cpu()
            os._exit(code)


def _yield_cpu() -> None:
    """Lowest CPU priority for the task's exit, once its reply is pushed: the kernel tears down
    the address space the fork shares with its template (torch: 20 to 30 ms of CPU per task,
    3 tasks a phase), while its SuperNode and the ServerApp still move the phase's replies on the
    same cores. At nice 19 that teardown waits for them."""
    try:
        os.nice(19)
    except OSError:
        pass  # already as low as it goes


def _warm_up(report: bytes) -> bool:
    """Import what the run's first task imported (the app, its framework), from where it did."""
    try:
        learned = json.loads(report)
    except ValueError:
        return False  # the task crashed before it could say: the next one is asked again
    for path in reversed(learned["path"]):
        if path not in sys.path:
            sys.path.insert(0, path)
    failed = 0
    for name in learned["modules"]:
        if name.startswith(_SKIPPED_PREFIXES) or name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: B036  # an import with side effects that fails here fails in each task too
            failed += 1
    print(f"fedops warm apps: template {os.getpid()} imported {len(learned['modules']) - failed} modules "
          f"of the app's first task ({failed} not importable); threads: {threading.active_count()}",
          file=sys.stderr, flush=True)
    _remember(os.environ.get(WARM_LEARNED_ENV, ""), learned["modules"], learned["path"])
    return True


if __name__ == "__main__":  # a template rebuilt as a new process: COMMAND FD
    serve(socket.socket(fileno=int(sys.argv[2])), sys.argv[1])
