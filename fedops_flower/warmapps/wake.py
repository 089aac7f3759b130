"""The SuperNode wakes its SuperExec when it stores a message, so no task waits for a poll.

Flower's SuperExec asks its SuperNode for a task (``AcquireTask``), then sleeps
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (Flower's default 1 s; FedOps sets 0.1 s) and asks again
(``flwr/supercore/superexec/run_superexec.py``). A ClientApp task waited half that interval on
average, up to all of it, on every phase's critical path, and three idle SuperExecs asked 30 times
a second between them, on the cores the phase's other hops need.

A run's SuperNode and SuperExec are one fork apart (``fedops_agent/forkserver.py``), so they share
a pipe: the SuperNode writes a byte when it has stored a message (:func:`notify`, called from the
pull hook of ``pull.py``, once the message *and its objects* are stored), and the SuperExec's
sleep between polls returns as soon as that byte arrives (:class:`WakeClock`). The interval becomes
a 5 s fallback (``FALLBACK_POLL_S``) for anything else that creates a task: the SuperNode creates the
task when it stores the message, before it pulls the message's objects, so a poll that came during
that pull started the task early, and the task then retried the objects against its SuperNode (at
most every 0.05 s) on the two cores the SuperNodes' own pulls needed. With 0.5 s the bench's steady
phases had 0.53 s of overhead on average, with 5 s 0.48 s (digits app, 3 SuperNodes; see
``bench/README.md``). No wake-up is lost: a byte written while the SuperExec asks is read by its
next sleep at once. Flower's loop, its requests and its task handling are unchanged; only the
``time`` name of that one module is replaced, and only when its loop still sleeps as expected.
"""

from __future__ import annotations

import inspect
import os
import select
import time
from types import ModuleType
from typing import Any

INSTALLED_MARK = "fedops warm apps: the SuperExec is woken by its SuperNode"
FALLBACK_POLL_S = 5.0  # FLWR_SUPEREXEC_TASK_POLL_INTERVAL of a SuperExec its SuperNode wakes (see above)
_SLEEP = "time.sleep(task_poll_interval)"


class WakeClock:
    """The ``time`` module, whose ``sleep`` ends early when a byte arrives on ``fd``."""

    def __init__(self, fd: int, real: ModuleType = time) -> None:
        self._fd: int | None = fd
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the SuperNode writes (then read every byte written so far)."""
        if self._fd is None:
            self._real.sleep(seconds)
            return
        readable, _, _ = select.select([self._fd], [], [], seconds)
        if readable:
            try:
                if not os.read(self._fd, 4096):  # the SuperNode is gone: Flower's own exit follows
                    self._fd = None
            except BlockingIOError:
                pass


def pipe() -> tuple[int, int]:
    """The (read, write) ends; the write end never blocks the SuperNode (a full pipe already wakes)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    os.set_blocking(read_end, False)
    return read_end, write_end


def notify(fd: int) -> None:
    """Wake the SuperExec (from the SuperNode)."""
    try:
        os.write(fd, b"\0")
    except (BlockingIOError, BrokenPipeError):
        pass  # already woken, or the SuperExec is gone


def install(fd: int) -> bool:
    """Make this process's SuperExec loop sleep on ``fd`` (call before ``flower_superexec()``), and
    set its poll interval to the fallback. False, changing nothing, when Flower's loop differs."""
    from flwr.supercore.superexec import run_superexec as module

    try:
        source = inspect.getsource(module.run_superexec)
    except (AttributeError, OSError, TypeError):
        return False
    if _SLEEP not in source:
        return False
    module.time = WakeClock(fd)  # type: ignore[assignment]  # a stand-in for the time module, with all its attributes
    os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(FALLBACK_POLL_S)  # read when the loop starts
    return True
