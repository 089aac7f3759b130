"""README command 1: the demo, run as a user runs it (`make demo` calls the venv's python without
activating the venv, so nothing of the venv is on PATH)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedops_common.proc import flower_env

ROOT = Path(__file__).resolve().parents[1]


def test_flower_children_find_their_scripts_without_an_activated_venv(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = flower_env(tmp_path)
    # flower-superlink starts `flower-superexec` by name: it must be found through PATH.
    assert shutil.which("flower-superexec", path=env["PATH"]) == str(Path(sys.executable).parent / "flower-superexec")
    assert env["FLWR_HOME"] == str(tmp_path) and env["FLWR_TELEMETRY_ENABLED"] == "0"


@pytest.mark.e2e
def test_demo_learns_across_three_agents(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDOPS_", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"
    code = ("import sys; from pathlib import Path; sys.argv = ['demo']; import runpy; "
            "m = runpy.run_path('examples/digits/demo.py', run_name='demo'); "
            f"sys.exit(m['main'](Path({str(tmp_path / 'demo')!r}), rounds=2))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    accuracies = [float(a) for a in re.findall(r"[0-9.]+", result.stdout.split("global accuracy by round:")[1])]
    assert len(accuracies) == 2 and accuracies[-1] > accuracies[0] and accuracies[-1] > 0.5
    assert "Model versions" in result.stdout
