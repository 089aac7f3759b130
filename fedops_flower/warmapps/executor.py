"""A SuperExec executor (Flower's ``Executor`` protocol) that forks tasks from a warm template.

Flower's ``SubprocessExecutor`` runs ``flwr-clientapp`` as a new process for every message; that
process imports Flower, our wrapper, the app and its framework before it handles the message
(torch alone about 2 CPU-seconds). :class:`WarmExecutor` asks the run's template process
(``template.py``) to fork the same entry point with the same arguments instead. Task types it has
no template for, and every task once a template cannot be built or rebuilt, go to Flower's own
``SubprocessExecutor``; the SuperExec's log says so with :data:`FALLBACK_MARK`, which the agent
turns into a run event.

:func:`install` makes Flower's own ``run_superexec`` use it: ``run_superexec`` looks its executor
up through the module's ``get_executor`` name, and that lookup is what we replace, in the forked
SuperExec process only. Flower's polling loop, task acquisition and message path run unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from logging import INFO, WARNING

from flwr.supercore import log
from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND, TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, SubprocessExecutor

from fedops_common.proc import pid_alive
from fedops_flower.warmapps import spare, template

FALLBACK_MARK = "fedops warm apps: falling back to Flower's subprocess executor"
READY_MARK = "fedops warm apps: template ready"
MAX_REBUILDS = 3  # a template that keeps dying (out of memory) is not rebuilt forever
READY_TIMEOUT_S = 60.0
TIMEOUT_ENV = "FEDOPS_WARM_TEMPLATE_TIMEOUT_S"  # the agent's (or control service's) environment


def ready_timeout_s() -> float:
    """Seconds a template gets to import Flower, our wrapper and the app's frameworks: a device that
    imports torch slowly sets ``FEDOPS_WARM_TEMPLATE_TIMEOUT_S`` higher than the default 60."""
    try:
        return max(float(os.environ.get(TIMEOUT_ENV, READY_TIMEOUT_S)), 0.001)
    except ValueError:
        return READY_TIMEOUT_S


class TemplateError(RuntimeError):
    """The template could not be started or stopped answering."""


class _Template:
    """One template process and our end of its socket.

    The first template of a run is a fork of the SuperExec made before Flower's SuperExec code has
    started any thread (:func:`install`): a thread that held a lock at the fork (Flower's telemetry
    ``event()`` thread takes its state lock and imports) would leave that lock held forever in the
    template and every task forked from it, and those tasks hung at their first ``event()``. A
    template rebuilt later, when the SuperExec runs threads, is a new process instead
    (``python -m fedops_flower.warmapps.template``), which pays the imports once more.
    """

    def __init__(self, command: str, fresh_process: bool = False, spare_socket: str = "") -> None:
        timeout = ready_timeout_s()
        self._popen: subprocess.Popen[bytes] | None = None
        self._adopted = bool(spare_socket)
        if spare_socket:  # the agent's spare, started before the run (spare.py): not our child
            ours = spare.connect(spare_socket, timeout)
            pid = -1
        else:
            ours, pid = self._start(command, fresh_process)
        self.pid = pid
        self.command = command
        self._sock = ours
        self._reader = ours.makefile("rb")
        self._sock.settimeout(timeout)
        started = time.monotonic()
        try:
            ready = self._answer()
        except TemplateError as err:
            self.close()
            if isinstance(err.__cause__, TimeoutError):  # importing a large framework on a slow device
                raise TemplateError(f"template {pid} not ready within {timeout:g} s ({TIMEOUT_ENV})") from err
            raise
        if not ready.get("ready") or not isinstance(ready.get("pid"), int):
            self.close()
            raise TemplateError(f"template {pid} did not start: {ready}")
        self.pid = int(ready["pid"])  # type: ignore[call-overload]  # checked to be an int just above
        self.ready_s = time.monotonic() - started
        # A fork request waits while the template imports what the run's first task used (torch:
        # 2-10 s on the loaded 2-core VM); a task started cold would have paid that import itself.

    def _start(self, command: str, fresh_process: bool) -> tuple[socket.socket, int]:
        ours, theirs = socket.socketpair()
        if fresh_process:
            process = subprocess.Popen([sys.executable, "-m", template.__name__, command, str(theirs.fileno())],
                                       pass_fds=[theirs.fileno()])
            pid = process.pid
            self._popen = process
        else:
            pid = os.fork()
            if pid == 0:
                ours.close()
                template.serve(theirs, command)
        theirs.close()
        return ours, pid

    def _answer(self) -> dict[str, object]:
        try:
            line = self._reader.readline()
        except OSError as err:
            raise TemplateError(f"template {self.pid}: {err}") from err
        if not line:
            raise TemplateError(f"template {self.pid} exited")
        answer = json.loads(line)
        assert isinstance(answer, dict)
        return answer

    def fork(self, argv: list[str], quiet: bool) -> int:
        try:
            self._sock.sendall(json.dumps({"argv": argv, "quiet": quiet}).encode() + b"\n")
        except OSError as err:
            raise TemplateError(f"template {self.pid}: {err}") from err
        pid = self._answer().get("pid")
        if not isinstance(pid, int):
            raise TemplateError(f"template {self.pid} could not fork")
        return pid

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        if self._adopted:  # not our child: the agent's fork server reaps it
            return self.pid > 0 and pid_alive(self.pid)
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def close(self) -> None:
        self._reader.close()
        self._sock.close()  # the template exits on end of file; its running tasks finish
        for _ in range(20):
            if not self.alive():
                return
            time.sleep(0.05)
        if self.pid <= 0:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
            if self._popen is not None:
                self._popen.wait()
            elif not self._adopted:
                os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


class WarmExecutor(SubprocessExecutor):
    """Flower's subprocess executor, with the task types in ``task_types`` forked from a template.

    Capacity, reconciliation and every other task type are the subprocess executor's.
    """

    def __init__(self, task_types: frozenset[TaskType] = frozenset({TaskType.CLIENT_APP})) -> None:
        self._templates: dict[TaskType, _Template | None] = {}
        self._rebuilds = 0
        for task_type in task_types:
            self._templates[task_type] = self._adopt_spare(task_type) or self._build(task_type)

    def _adopt_spare(self, task_type: TaskType) -> _Template | None:
        """The agent's spare ClientApp template (``spare.py``), when it handed this run one; None
        (and a template of our own) when there is none or it cannot be adopted."""
        path = os.environ.pop(spare.SPARE_ENV, "")  # one spare, one adoption: a rebuild forks its own
        if not path or task_type != TaskType.CLIENT_APP:
            return None
        try:
            adopted = _Template(TASK_TYPE_TO_COMMAND[task_type], spare_socket=path)
        except (OSError, TemplateError, ValueError) as err:
            log(WARNING, "fedops warm apps: the agent's spare template %s could not be adopted (%s); "
                "forking one", path, err)
            return None
        log(INFO, "%s: %s pid %d (the agent's spare) in %.2f s", READY_MARK, task_type, adopted.pid, adopted.ready_s)
        return adopted

    def _build(self, task_type: TaskType, fresh_process: bool = False) -> _Template | None:
        try:
            built = _Template(TASK_TYPE_TO_COMMAND[task_type], fresh_process)
        except (OSError, TemplateError, ValueError) as err:
            log(WARNING, "%s for %s: %s", FALLBACK_MARK, task_type, err)
            return None
        log(INFO, "%s: %s pid %d in %.2f s", READY_MARK, task_type, built.pid, built.ready_s)
        return built

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork the task from its template; Flower's subprocess launch when there is none."""
        warm = self._templates.get(spec.task_type)
        if warm is None:
            return super().launch(spec)
        try:
            pid = warm.fork(_arguments(spec), quiet=spec.suppress_output)
        except TemplateError as err:
            log(WARNING, "fedops warm apps: %s; rebuilding it", err)
            warm.close()
            self._templates[spec.task_type] = self._rebuild(spec.task_type)
            return self.launch(spec)
        log(INFO, "fedops warm apps: task %d forked as pid %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def _rebuild(self, task_type: TaskType) -> _Template | None:
        self._rebuilds += 1
        if self._rebuilds > MAX_REBUILDS:
            log(WARNING, "%s for %s: the template died %d times", FALLBACK_MARK, task_type, self._rebuilds)
            return None
        return self._build(task_type, fresh_process=True)

    def reconcile(self) -> None:
        """Rebuild a template that died between tasks (killed, out of memory)."""
        for task_type, warm in list(self._templates.items()):
            if warm is not None and not warm.alive():
                log(WARNING, "fedops warm apps: template %d of %s exited; rebuilding it", warm.pid, task_type)
                warm.close()
                self._templates[task_type] = self._rebuild(task_type)

    def close(self) -> None:
        """Stop the templates (tasks still running finish on their own)."""
        for warm in self._templates.values():
            if warm is not None:
                warm.close()
        self._templates.clear()


def _arguments(spec: ExecutionSpec) -> list[str]:
    """The command-line arguments ``SubprocessExecutor.launch`` gives the task's console script."""
    args = [TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type], spec.runtime_api_address, "--token", spec.token]
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args.extend(["--root-certificates", spec.root_certificates_path])
    if spec.parent_pid is not None:
        args.extend(["--parent-pid", str(spec.parent_pid)])
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    return args


def install(task_types: frozenset[TaskType] = frozenset({TaskType.CLIENT_APP})) -> None:
    """Build a :class:`WarmExecutor` now and make this process's ``run_superexec`` use it. Call it in
    the SuperExec's own process before ``flower_superexec()``, which starts threads (see
    :class:`_Template`)."""
    from flwr.supercore.superexec import run_superexec as module

    executor = WarmExecutor(task_types)

    def get_executor(*_: object, **__: object) -> WarmExecutor:
        return executor

    module.get_executor = get_executor  # the one seam run_superexec offers for its executor
