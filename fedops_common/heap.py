"""Keep Python's garbage collector off what a Flower process imported or inherited at its start.

A full (generation 2) collection walks every container object the process holds: in a SuperLink,
a SuperNode or a ClientApp task that is all of Flower, FastAPI, httpx, gRPC (and torch, in a task
forked from a template), hundreds of thousands of objects that live as long as the process and
are never garbage. In a process forked from a fork server or a template, the walk also writes to
every object's header, so the kernel copies each page the fork still shared with its parent. A hop
trace of the issue-16 bench (digits app, 3 SuperNodes, 2 cores; ``gc.callbacks``) found:

- each run's three SuperNodes making their first full collection in round 1's evaluate phase,
  0.12 CPU-s each (0.16 to 0.25 s of wall time with the phase's other processes), which made that
  phase the largest of the run every time;
- the run's SuperLink making a full collection every second or two, 0.08 to 0.17 s during which it
  answered nobody, in whichever phase it fell.

:func:`freeze` moves every object the process holds into the collector's permanent generation
(``gc.freeze``): O(1), no object touched. Later collections walk only what the process allocated
since, which is also all that can become garbage. Forked processes call it first thing (what they
inherited); :func:`run_frozen` runs a console script with its imports frozen (the SuperLink, through
``python -m fedops_flower.warmapps.superlink``).
"""

from __future__ import annotations

import gc
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import NoReturn


def freeze() -> None:
    """Leave everything this process holds now to the permanent generation (see the module)."""
    gc.freeze()


def run_frozen(script: str, args: list[str]) -> NoReturn:
    """Run the console script ``script`` (a name or a path to it) with ``args``, as its own file
    would, once its module is imported and frozen."""
    name = Path(script).name
    found = entry_points(group="console_scripts", name=name)
    if not found:
        raise SystemExit(f"no console script named {name!r} in this environment")
    main = next(iter(found)).load()
    freeze()
    sys.argv = [script, *args]
    sys.exit(main())

