"""Flower's per-request steps that only read process memory run on the event loop, not in a thread.

Flower (1.42) serves its Fleet and Runtime APIs with FastAPI, and every step of a request that is a
plain ``def`` (each dependency, the handler, the SuperLink's SuperNode authentication) goes to a
worker thread and back (``run_in_threadpool``): five hand-offs for a SuperNode's ``pull-object``
(the version check, the protobuf request, the LinkState, the signature check, the handler), five
for a task's or the ServerApp's Runtime call (the protobuf request, the state, the handlers, the
task token, the handler). A hand-off cost 150 µs of CPU on the 2-core dev VM (uvloop, 5,000 in a
loop), and the thread then waits for the event loop to let go of the GIL; what it runs is a dict
lookup or a few, under the state's own lock. A phase is 60 to 115 such requests through the run's
SuperLink and as many through the SuperNodes, every one of them on the phase's critical path.

:func:`install` replaces ``run_in_threadpool`` in the modules that call it for those steps
(FastAPI's dependency solver, Flower's protobuf routes and its Fleet authentication) by
:func:`run_inline_known`'s wrapper: the steps named in ``INLINE`` are called in place, anything
else still goes to the thread pool. Only the processes whose state is in memory install it (the
SuperNodes; a SuperLink without ``--superlink-state-on-disk``): with a SQLite file each step is
disk I/O, which must not hold up the event loop. The Control API's handlers (run submission, log
streams) keep their threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedops_flower.warmapps import seams

INSTALLED_MARK = "fedops: Flower's in-memory request steps run on the event loop"
# Module -> qualified names of the steps that only read or write the process's in-memory state
# (read from each function in Flower 1.42): dependencies, the SuperNode signature check, handlers.
INLINE: dict[str, frozenset[str]] = {
    "flwr.supercore.protobuf.translation": frozenset({"get_protobuf_request"}),
    "flwr.supercore.dependencies.version": frozenset({"VersionDependency"}),
    "flwr.superlink.dependencies.linkstate": frozenset({"get_linkstate"}),
    "flwr.supercore.dependencies.runtime": frozenset({"get_runtime_state", "get_runtime_handlers", "get_task"}),
    "flwr.superlink.routers.fleet.node_auth": frozenset({"authenticate_node"}),
    "flwr.superlink.routers.fleet.router": frozenset({
        "fleet_pull_messages", "fleet_push_messages", "fleet_pull_object", "fleet_push_object",
        "fleet_confirm_message_received", "fleet_send_node_heartbeat", "fleet_get_run"}),
    "flwr.supercore.routers.runtime.router": frozenset({
        "pull_messages", "push_messages", "pull_object", "push_object", "confirm_message_received",
        "pull_task_input", "push_task_output", "send_task_heartbeat", "get_nodes"}),
}
# The modules whose ``run_in_threadpool`` runs those steps.
CALLERS = ("fastapi.dependencies.utils", "flwr.supercore.protobuf.routing", "flwr.superlink.routers.fleet.node_auth")


def runs_inline(func: Any) -> bool:
    """True for a step of ``INLINE``: a function, or an instance of a class, named there."""
    named = func if hasattr(func, "__qualname__") else type(func)
    return getattr(named, "__qualname__", None) in INLINE.get(getattr(named, "__module__", ""), ())


def run_inline_known(run_in_threadpool: Callable[..., Any]) -> Callable[..., Any]:
    """``run_in_threadpool``, calling the steps of ``INLINE`` in place."""

    async def run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if runs_inline(func):
            return func(*args, **kwargs)
        return await run_in_threadpool(func, *args, **kwargs)

    return run


def install(callers: tuple[str, ...] = CALLERS) -> bool:
    """Run this process's in-memory request steps on its event loop (before its app serves); False,
    changing nothing, when one of ``callers`` no longer calls ``run_in_threadpool`` by that name."""
    return seams.replace(callers, "run_in_threadpool", run_inline_known)
