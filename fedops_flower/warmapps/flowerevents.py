"""Flower's usage telemetry, switched off, no longer runs a thread and a program per task.

FedOps runs every Flower process with ``FLWR_TELEMETRY_ENABLED=0``. Flower's ``event()`` still
starts a thread for each event, which builds the payload it would have sent: ``platform``'s
description of the machine, which runs the ``file`` program on the Python executable
(``platform.architecture``), 1.6 ms of wall time and a process per event. A ClientApp task sends
two (start and exit; ``flwr_exit`` waits for the second), so every task of every round paid a
thread start on its way to the handler and two short processes beside the phase's hops.

:func:`install` (in a template, before it forks) replaces ``event`` in the modules of Flower's app
runtimes with one that returns Flower's own answer for a disabled telemetry (``"disabled"``) at
once, when telemetry is off and its payload logging (``FLWR_TELEMETRY_LOGGING=1``) too; otherwise
it changes nothing.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

from fedops_flower.warmapps import seams

# Flower's modules that send an event per task, each having imported ``event`` by name (Flower 1.42).
CALLERS = ("flwr.supernode.runtime.run_clientapp", "flwr.superlink.runtime.run_serverapp",
           "flwr.supercore.exit.exit")


def disabled_event(event_type: Any, event_details: dict[str, Any] | None = None) -> Future[str]:
    """What Flower's ``event`` resolves to when its telemetry is off, without a thread."""
    done: Future[str] = Future()
    done.set_result("disabled")
    return done


def install() -> bool:
    """Skip Flower's off telemetry in this process (and its forks); False, changing nothing, when
    telemetry is on, its payloads are logged, or one of the runtimes no longer calls ``event``."""
    if os.environ.get("FLWR_TELEMETRY_ENABLED", "1") != "0" or os.environ.get("FLWR_TELEMETRY_LOGGING", "0") == "1":
        return False
    return seams.replace(CALLERS, "event", lambda _: disabled_event)
