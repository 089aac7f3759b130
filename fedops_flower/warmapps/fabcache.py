"""A run's FAB is unpacked and checked once, not again by each of its tasks.

Flower's app runtimes (``run_clientapp``, ``run_serverapp``) call ``install_from_fab`` with the FAB
at the start of every task: it unzips the archive into a temporary directory, hashes every file
against the FAB's manifest, parses and validates ``pyproject.toml``, and only then finds the app
already installed (``skip_prompt=True`` returns the existing directory) and deletes what it
unpacked. In a forked ClientApp task that was 15 ms of the 0.13 s before the handler started
(cProfile of 15 tasks, digits app, the issue-16 bench), in every task of every round.

:func:`install` (in a template, before it forks) wraps it: the first task that installs a FAB
writes its SHA-256 and the directory Flower returned into a file beside the installed apps
(``FLWR_HOME/apps/.fedops-installed/<sha256>``, the run's own ``FLWR_HOME``); a later task with the
same bytes whose directory is still there returns that directory, as Flower would have after
checking the same bytes again. Other calls (a path, an explicit directory, a prompt) go to Flower.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedops_flower.warmapps import seams

MARKS_DIR = ".fedops-installed"
# Flower's modules that call install_from_fab by that name at each task (Flower 1.42).
CALLERS = ("flwr.supernode.runtime.run_clientapp", "flwr.superlink.runtime.run_serverapp")


def once(install: Callable[..., Path], home: Callable[[], Path], app_dir: str) -> Callable[..., Path]:
    """``install`` (Flower's ``install_from_fab``), skipped for FAB bytes it installed before."""

    def install_from_fab(fab_file: Any, install_dir: Path | None = None, skip_prompt: bool = False) -> Path:
        if not isinstance(fab_file, bytes) or install_dir is not None or not skip_prompt:
            return install(fab_file, install_dir, skip_prompt)
        marks = home() / app_dir / MARKS_DIR
        mark = marks / hashlib.sha256(fab_file).hexdigest()
        with contextlib.suppress(OSError, ValueError):
            installed = Path(mark.read_text(encoding="utf-8"))
            if installed.is_dir():
                return installed
        installed = install(fab_file, install_dir, skip_prompt)
        with contextlib.suppress(OSError):  # not kept: the next task installs it again, as Flower does
            marks.mkdir(parents=True, exist_ok=True)
            partial = mark.with_name(f"{mark.name}.{os.getpid()}")
            partial.write_text(str(installed), encoding="utf-8")
            partial.replace(mark)
        return installed

    return install_from_fab


def install() -> bool:
    """Wrap ``install_from_fab`` where Flower's app runtimes call it; False, changing nothing, when
    one of them no longer does."""
    from flwr.common.constant import APP_DIR
    from flwr.supercore.utils import get_flwr_home

    return seams.replace(CALLERS, "install_from_fab", lambda install: once(install, get_flwr_home, APP_DIR))
