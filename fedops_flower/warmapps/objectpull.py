"""A shorter first retry when a pulled message's objects are not there yet.

Flower sends a message in two steps: the sender pushes the message (with its object tree), then
its objects (the arrays, in chunks). A receiver that pulls in between gets ``ObjectUnavailable``
for the objects still missing and retries after a backoff that starts at **1 s** and doubles up to
10 s (``flwr.supercore.constant.PULL_INITIAL_BACKOFF``/``PULL_BACKOFF_CAP``, the default
arguments of ``pull_objects``; not settings). That happens on three hops of every phase, each time
the receiver is quick:

- the SuperNode pulls the ServerApp's message from the SuperLink (with warm apps it polls every
  0.1 s while its run is active, so it usually sees the message before its arrays);
- the ClientApp task pulls it from its SuperNode, which stores the message, and so starts the
  task, before it has pulled the objects itself (a forked task asks within 0.02 to 0.15 s);
- the ServerApp's Grid (polling every 0.1 s) pulls each reply while the SuperNode still pushes it.

A slow new process or Flower's 3 s pull sleep hid that wait; fast hops paid 1 s (sometimes 3 s) per
hop. :func:`install` starts the backoff at ``INITIAL_BACKOFF_S`` and caps it at ``BACKOFF_CAP_S``:
a retry is one small RPC to a local or nearby server, so retrying every second at worst costs next
to nothing, and an object that takes longer to arrive (a large model over a slow link) is picked up
at most a second after it did rather than up to 10 s. Tries and the overall time limit stay Flower's.

The apps' hops are local (a task pulls from its own SuperNode, a ServerApp from its own SuperLink),
so the templates cap the backoff at ``LOCAL_BACKOFF_CAP_S``: with the doubling to 1 s, a task that
asked 0.05 s before its SuperNode had the arrays next asked 0.24 s after it had them (waits 0.02,
0.04, 0.08, 0.16 s; a hop trace of the issue-16 bench), a third of that phase. A SuperNode, which
may pull over a slow link and is one of many on its SuperLink, keeps the 1 s cap.
"""

from __future__ import annotations

from typing import Any

INITIAL_BACKOFF_S = 0.02
BACKOFF_CAP_S = 1.0
LOCAL_BACKOFF_CAP_S = 0.05


def install(initial_backoff_s: float = INITIAL_BACKOFF_S, backoff_cap_s: float = BACKOFF_CAP_S) -> bool:
    """Change the default backoff of Flower's object pulls in this process (and its forks).

    Returns False, changing nothing, when Flower's functions no longer take these arguments."""
    from flwr.supercore.inflatable import inflatable_utils as flower

    defaults: list[dict[str, Any]] = [getattr(f, "__kwdefaults__", None) or {}
                                      for f in (flower.pull_objects, flower.pull_and_inflate_object_from_tree)]
    if not all({"initial_backoff", "backoff_cap"} <= set(d) for d in defaults):
        return False
    # Callers pass neither argument, so the keyword-only defaults decide; every module that imported
    # these functions by name holds the same function objects (and so the same dictionaries).
    for kwdefaults in defaults:
        kwdefaults["initial_backoff"] = initial_backoff_s
        kwdefaults["backoff_cap"] = backoff_cap_s
    return True
