"""The agent's SuperNode launch with real Flower processes: forked from the preloaded fork server
(the default) and started as new processes (``--no-preload-flower``) behave the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedops_agent import forkserver
from fedops_agent.supernode import start_supernode, stop_supernode
from fedops_common.net import free_port
from fedops_common.proc import pid_alive, scan_processes
from tests.test_e2e import wait_for

pytestmark = pytest.mark.integration  # real servers or processes, no FL run


def _titles(marker: str) -> dict[int, str]:
    """pid -> command line (or title) of every process that mentions ``marker``."""
    return {pid: raw.replace(b"\0", b" ").decode(errors="replace").strip()
            for pid, _, raw in scan_processes() if marker.encode() in raw}


def _children(parent: int, script: str) -> list[int]:
    """Children of ``parent`` running ``script``. (A process Flower forks to run a command shows its
    parent's command line until it execs: such grandchildren are not counted.)"""
    return [pid for pid, proc, raw in scan_processes() if script.encode() in raw
            and (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(parent)]


@pytest.mark.parametrize("forked", [True, False], ids=["forked", "new-process"])
def test_supernode_and_superexec_start_and_stop_as_one_group(tmp_path: Path, forked: bool) -> None:
    """Both ways give a SuperNode and a SuperExec in one process group, writing to supernode.log and
    found by their FLWR_HOME; a stop leaves neither behind."""
    if forked:
        forkserver.warm()
    workdir = tmp_path / "run-7"
    dead_superlink = f"127.0.0.1:{free_port()}"  # nothing listens: the SuperNode keeps retrying
    node = start_supernode("run-7", dead_superlink, {"partition-id": "1"}, workdir, forked=forked)
    log_path = workdir / "supernode.log"
    try:
        # The SuperExec starts once the SuperNode's Runtime API is up, and logs it.
        wait_for(lambda: log_path.exists() and "Starting Flower SuperExec" in log_path.read_text(), 60, 0.1)
        superexecs = _children(node.process.pid, "flower-superexec")
        assert len(superexecs) == 1
        if forked:
            # Forks show the command line they stand for, with the FLWR_HOME they run with.
            processes = _titles(str(workdir / "flwr"))
            supernode = processes[node.process.pid]
            assert supernode.startswith(f"FLWR_HOME={workdir / 'flwr'} flower-supernode ")
            assert f"--superlink {dead_superlink}" in supernode and "--isolation process" in supernode
            assert processes[superexecs[0]].startswith(f"FLWR_HOME={workdir / 'flwr'} flower-superexec ")
            assert f"--parent-pid {node.process.pid}" in processes[superexecs[0]]
        assert os.getpgid(node.process.pid) == node.process.pid == os.getpgid(superexecs[0])
        assert node.process.poll() is None
    finally:
        stop_supernode(node, hard=False)
    assert node.process.poll() is not None
    wait_for(lambda: not pid_alive(superexecs[0]), 10, 0.1)
    assert "Starting Flower SuperNode" in log_path.read_text()


def test_forked_supernode_crash_is_seen_as_an_exit_code(tmp_path: Path) -> None:
    """A forked SuperNode that fails (here: an unreadable CA file) exits non-zero, and the agent's
    supervision sees that code as it would a new process's."""
    forkserver.warm()
    workdir = tmp_path / "run-8"
    node = start_supernode("run-8", f"127.0.0.1:{free_port()}", {}, workdir,
                           root_certificates=tmp_path / "missing-ca.pem", forked=True)
    code = node.process.wait(timeout=60)
    assert code != 0
    assert "`--root-certificates` does not point to a file" in (workdir / "supernode.log").read_text()
    # Its SuperExec fork, still waiting for the Runtime API, leaves with it.
    wait_for(lambda: _titles(str(workdir)) == {}, 10, 0.1)


@pytest.mark.parametrize("forked", [True, False], ids=["forked", "new-process"])
def test_a_stop_right_after_the_start_leaves_nothing(tmp_path: Path, forked: bool) -> None:
    """A hard stop of a run that is still starting reaches an agent right after its StartTraining:
    the SuperNode must not outlive it (a fork signalled before it led its group ran on: CI saw it)."""
    if forked:
        forkserver.warm()
    for attempt in range(5):
        workdir = tmp_path / f"run-{attempt}"
        node = start_supernode(f"run-{attempt}", f"127.0.0.1:{free_port()}", {}, workdir, forked=forked)
        stop_supernode(node, hard=True)
        assert node.process.poll() is not None
        marker = str(workdir)
        wait_for(lambda marker=marker: _titles(marker) == {}, 10, 0.1)
