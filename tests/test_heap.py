"""fedops_common.heap: a process's start-up objects left to the collector's permanent generation."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedops_common import heap
from fedops_flower.warmapps import gates, gridwake


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_freeze_leaves_every_object_held_now_to_the_permanent_generation() -> None:
    before = gc.get_freeze_count()
    heap.freeze()
    assert gc.get_freeze_count() > before + 1000  # pytest alone holds far more
    cycle: list[Any] = []
    cycle.append(cycle)  # garbage made after the freeze is still collected
    del cycle
    assert gc.collect() >= 1


class _EntryPoint:
    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    def load(self) -> Any:
        def main() -> int:
            self.seen["frozen"] = gc.get_freeze_count()
            self.seen["argv"] = list(sys.argv)
            return 3

        return main


def test_run_frozen_runs_the_console_script_frozen_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    asked: list[str] = []

    def entry_points(group: str, name: str) -> list[_EntryPoint]:
        asked.append(f"{group}:{name}")
        return [_EntryPoint(seen)]

    monkeypatch.setattr(heap, "entry_points", entry_points)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as done:
        heap.run_frozen("/venv/bin/flower-superlink", ["--port", "9"])
    assert done.value.code == 3
    assert asked == ["console_scripts:flower-superlink"]  # found by the script's name, from a path too
    assert seen["argv"] == ["/venv/bin/flower-superlink", "--port", "9"]
    assert seen["frozen"] > 1000


def test_a_real_console_script_runs_under_it_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    """Through the module the control service starts every run's SuperLink with, hooks and all."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path)}
    ran = subprocess.run([sys.executable, "-m", "fedops_flower.warmapps.superlink", "fedopsctl", "--help"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert ran.returncode == 0, ran.stderr
    assert "Usage" in ran.stdout
    assert gridwake.INSTALLED_MARK in ran.stderr and gates.INSTALLED_MARK in ran.stderr
    refused = subprocess.run([sys.executable, "-m", "fedops_flower.warmapps.superlink", "no-such-script"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 1
    assert "no console script named 'no-such-script'" in refused.stderr
