"""Where FedOps hooks into Flower's processes: a function that Flower's modules import by name.

A module that did ``from x import f`` looks ``f`` up in its own namespace at each call, so setting
that name in each such module (before the process runs Flower) changes what those calls reach and
nothing else. :func:`replace` does it for all the modules, or for none when one of them no longer
imports the name (a Flower upgrade): then Flower runs as it was written.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def replace(modules: tuple[str, ...], name: str, new: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Set ``name`` in each of ``modules`` to ``new(what it was)``; False, changing nothing, when a
    module cannot be imported or holds no callable ``name``."""
    found = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return False
        if not callable(getattr(module, name, None)):
            return False
        found.append(module)
    for module in found:
        setattr(module, name, new(getattr(module, name)))
    return True
