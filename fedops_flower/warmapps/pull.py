"""Shorter SuperNode waits while a run is active: its pull sleep and its reply check.

Flower's SuperNode (``flwr/supernode/start_client_internal.py``) sleeps 3 s whenever it pulls and
finds no message, and checks every 0.5 s whether its ClientApp has replied. Neither is a setting.
With warm apps a phase's client work can take 0.05 s, and these two waits were most of what was
left of a phase: in the issue-16 bench, 1.85 to 4.21 s from "sent" to the handler's start and
0.6 to 1.6 s from the handler's end to "phase finished".

:func:`install` replaces the ``time`` name of that one module with :class:`PollClock`, which keeps
every other ``time`` function and changes only those two sleeps:

- the pull sleep is ``ACTIVE_PULL_S`` for ``ACTIVE_WINDOW_S`` after the last message the SuperNode
  pulled (or after it started), and Flower's 3 s after that: a run's next phase usually follows
  within seconds (aggregation, the central evaluation), and a SuperNode of an idle federation
  still asks its SuperLink only every 3 s;
- the reply check (a read of the SuperNode's own in-memory state) is ``REPLY_CHECK_S``.

Flower's message path, its retries and its node state are unchanged. The module is patched only if
its code still has the two sleeps this expects (:func:`install` returns False otherwise and the
SuperNode runs as Flower wrote it), so a Flower upgrade that changes them cannot be mispatched.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

INSTALLED_MARK = "fedops warm apps: SuperNode pull interval shortened"
NOT_INSTALLED_MARK = "fedops warm apps: SuperNode pull interval left as Flower's"
FLOWER_PULL_SLEEP_S = 3
FLOWER_REPLY_CHECK_S = 0.5
ACTIVE_PULL_S = 0.1
ACTIVE_WINDOW_S = 30.0
REPLY_CHECK_S = 0.02


class PollClock:
    """The ``time`` module, with the SuperNode's two waits shortened while its run is active."""

    def __init__(self, real: ModuleType = time, active_pull_s: float = ACTIVE_PULL_S,
                 active_window_s: float = ACTIVE_WINDOW_S, reply_check_s: float = REPLY_CHECK_S) -> None:
        self._real = real
        self.active_pull_s = active_pull_s
        self.active_window_s = active_window_s
        self.reply_check_s = reply_check_s
        self._last_message = real.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def message_pulled(self) -> None:
        """A message arrived: poll fast for the next ``active_window_s``."""
        self._last_message = self._real.monotonic()

    def pull_wait(self) -> float:
        """How long the SuperNode waits before its next pull, after one that found nothing."""
        if self._real.monotonic() - self._last_message < self.active_window_s:
            return self.active_pull_s
        return float(FLOWER_PULL_SLEEP_S)

    def sleep(self, seconds: float) -> None:
        """Flower's 3 s pull sleep and 0.5 s reply check shortened; any other sleep as asked."""
        if seconds == FLOWER_PULL_SLEEP_S:
            seconds = self.pull_wait()
        elif seconds == FLOWER_REPLY_CHECK_S:
            seconds = self.reply_check_s
        self._real.sleep(seconds)


def _expects_flowers_sleeps(module: ModuleType) -> bool:
    """True when the module's loop and reply wait still sleep as this module expects."""
    try:
        loop = inspect.getsource(module.start_client_internal)
        push = inspect.getsource(module._push_messages)
    except (AttributeError, OSError, TypeError):
        return False
    return (f"time.sleep({FLOWER_PULL_SLEEP_S})" in loop and f"time.sleep({FLOWER_REPLY_CHECK_S})" in push
            and callable(getattr(module, "_pull_and_store_message", None)))


def install(clock: PollClock | None = None, on_message: Callable[[], None] | None = None) -> PollClock | None:
    """Patch this process's Flower SuperNode loop (call before ``flower_supernode()``); the clock
    installed, or None when Flower's code is not the one this was written for. ``on_message`` is
    called each time the SuperNode has stored a message (``wake.py``: it wakes the SuperExec)."""
    from flwr.supernode import start_client_internal as module

    if not _expects_flowers_sleeps(module):
        return None
    clock = clock or PollClock()
    pull: Callable[..., int | None] = module._pull_and_store_message

    def pull_and_note(*args: Any, **kwargs: Any) -> int | None:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            clock.message_pulled()
            if on_message is not None:
                on_message()
        return run_id

    # The loop looks both names up in the module at each call: the only seams it has.
    module._pull_and_store_message = pull_and_note
    module.time = clock  # type: ignore[assignment]  # a stand-in for the time module, with all its attributes
    return clock
