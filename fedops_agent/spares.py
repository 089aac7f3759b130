"""Spare ClientApp templates: one per task this agent serves, ready before the task's next run.

A run's ClientApp template (``fedops_flower/warmapps``) imports the app's frameworks when the run
starts, and round 1's messages waited for it: 5 to 8 s on the 2-core bench for torch and
scikit-learn, three agents importing at once (``bench/README.md``, warm apps). The agent starts a
spare for a task when the control service selects it for the task (``PrepareTask``) and again after
each run of the task ends, so the task's next run adopts a template that has imported them already.

Each spare holds the app's frameworks in memory while it waits (torch and scikit-learn: about 870 MB
RSS, most of it torch's shared libraries; a numpy-only app about 130 MB): the agent keeps
``capacity`` of them (``fedops-agent --warm-spares``, default 1, the tasks it prepared last), and
none with ``--warm-spares 0`` or ``--no-warm-apps``. A spare is used by one run; its process group
is stopped with that run's SuperNode.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from fedops_agent import forkserver
from fedops_common import runconfig as keys
from fedops_common.logging import get_logger
from fedops_common.proc import ChildProcess, pid_alive, stop_process_group

log = get_logger(__name__)
DEFAULT_CAPACITY = 1
SOCKET_DIR_PREFIX = "fedops-spares-"  # then the agent's pid and a random part: fedops-spares-PID-XXXXXXXX


@dataclass
class Spare:
    """A spare template started for one task."""

    task_id: str
    imports: tuple[str, ...]
    learned: str
    process: ChildProcess
    socket_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def ready_file(self) -> Path:
        """Written by the spare once it has imported everything."""
        return self.socket_path.with_name(self.socket_path.name + keys.WARM_SPARE_READY_SUFFIX)


class Spares:
    """The agent's spare templates, by task (at most ``capacity``, the most recently prepared)."""

    def __init__(self, log_dir: Path, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._log_dir = log_dir
        # Unix socket paths are limited to 107 bytes, and an agent's state directory can be deep:
        # the sockets live in a private directory of their own (mode 0700), in the system's temporary
        # directory (there, not under the agent's state, a waiting spare's title names no run's files).
        self._socket_dir: Path | None = None  # made with the first spare
        self._spares: OrderedDict[str, Spare] = OrderedDict()
        self._count = 0

    def prepare(self, task_id: str, imports: list[str], learned: Path | None) -> Spare | None:
        """Make sure a live spare for ``task_id`` imports ``imports`` (and the modules kept in
        ``learned``); returns the spare (None with capacity 0). Spares beyond the capacity, the
        least recently prepared first, are stopped."""
        if self.capacity <= 0:
            return None
        wanted = (tuple(imports), str(learned or ""))
        spare = self._spares.pop(task_id, None)
        if spare is not None and (not spare.alive() or (spare.imports, spare.learned) != wanted):
            self._stop(spare)
            spare = None
        if spare is None:
            spare = self._start(task_id, *wanted)
        self._spares[task_id] = spare
        while len(self._spares) > self.capacity:
            self._stop(self._spares.popitem(last=False)[1])
        return spare

    def _start(self, task_id: str, imports: tuple[str, ...], learned: str) -> Spare:
        self._count += 1
        if self._socket_dir is None:
            sweep_left_socket_dirs(Path(tempfile.gettempdir()))
            self._socket_dir = Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-"))
        socket_path = self._socket_dir / f"{self._count}.sock"
        env = {keys.WARM_IMPORTS_ENV: ",".join(imports), keys.WARM_LEARNED_ENV: learned}
        self._log_dir.mkdir(parents=True, exist_ok=True)
        process = forkserver.start_spare(socket_path, env, self._log_dir / f"spare-{self._count}.log")
        log.info("spare ClientApp template started", task_id=task_id, pid=process.pid, imports=list(imports))
        return Spare(task_id, imports, learned, process, socket_path)

    def take(self, task_id: str, imports: list[str]) -> Spare | None:
        """The task's spare, for a run that needs ``imports``: removed from the spares (a run uses it
        up). None when there is none, it died, or it lacks one of them (it is stopped then)."""
        spare = self._spares.pop(task_id, None)
        if spare is None:
            return None
        if not spare.alive() or not set(imports) <= set(spare.imports):
            self._stop(spare)
            return None
        return spare

    def ready(self, task_id: str) -> bool:
        """Whether the task's spare has imported everything (its ready file is there)."""
        spare = self._spares.get(task_id)
        if spare is None or not spare.alive():
            return False
        return spare.ready_file.exists()

    def _stop(self, spare: Spare) -> None:
        stop(spare)  # a killed spare leaves its socket and ready file behind
        for path in (spare.socket_path, spare.ready_file):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop every spare and remove their sockets' directory."""
        while self._spares:
            self._stop(self._spares.popitem()[1])
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def sweep_left_socket_dirs(tmp: Path) -> list[Path]:
    """Remove the spares' socket directories that agents killed outright (SIGKILL: no :meth:`Spares.close`)
    left in ``tmp``: those of this user whose agent pid, in the name, no longer runs. Another agent's
    live directory is kept (several agents may share a machine). Returns what was removed."""
    removed = []
    for directory in tmp.glob(f"{SOCKET_DIR_PREFIX}*-*"):
        pid = directory.name[len(SOCKET_DIR_PREFIX):].split("-", 1)[0]
        try:
            mine = directory.is_dir() and directory.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    if removed:
        log.info("removed spare socket directories of agents that were killed", directories=[str(d) for d in removed])
    return removed


def stop(spare: Spare, hard: bool = True, grace_s: float = 5.0) -> None:
    """Stop a spare's process group: the spare (or the run's template it became) and its tasks."""
    stop_process_group(spare.process, hard=hard, grace_s=grace_s)
