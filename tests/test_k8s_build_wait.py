"""The Kubernetes tests wait for `make test`'s background build of their binaries (tests/kube.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import kube


@pytest.fixture
def status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "build.status"
    monkeypatch.setattr(kube, "BUILD_STATUS", path)
    (tmp_path / "build.log").write_text("install_k8s: kube-apiserver v1.37.2 (slow the first time)\ngo: boom\n")
    return path


def test_no_background_build_or_a_finished_one_does_not_wait(status: Path) -> None:
    kube.wait_for_build(timeout_s=0.1)  # no status file: nothing was started in the background
    status.write_text("exit 0\n")
    kube.wait_for_build(timeout_s=0.1)


def test_a_failed_build_fails_with_its_log(status: Path) -> None:
    status.write_text("exit 2\n")
    with pytest.raises(AssertionError, match=r"(?s)exit 2.*go: boom"):
        kube.wait_for_build(timeout_s=0.1)


def test_a_running_build_is_waited_for_until_it_ends(status: Path) -> None:
    builder = subprocess.Popen(["sleep", "1"])
    status.write_text(f"running {builder.pid}\n")
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; echo 'exit 0' > {status}"])
    kube.wait_for_build(timeout_s=30)
    builder.wait()
    assert 0.5 < time.monotonic() - started < 20


def test_a_build_that_died_without_a_word_fails(status: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    status.write_text(f"running {dead.pid}\n")
    assert not os.path.exists(f"/proc/{dead.pid}")
    with pytest.raises(AssertionError, match="running"):
        kube.wait_for_build(timeout_s=5)
