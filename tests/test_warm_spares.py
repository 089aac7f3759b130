"""Spare ClientApp templates (fedops_agent/spares.py, fedops_flower/warmapps/spare.py) and the
SuperNode's wake-up of its SuperExec (fedops_flower/warmapps/wake.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedops_agent import forkserver
from fedops_agent.spares import SOCKET_DIR_PREFIX, Spares, sweep_left_socket_dirs
from fedops_common.proc import pid_alive
from fedops_flower.warmapps import spare, wake
from tests.test_e2e import wait_for


def test_the_wake_clock_returns_when_the_supernode_writes_and_sleeps_its_time_otherwise() -> None:
    read_end, write_end = wake.pipe()
    clock = wake.WakeClock(read_end)
    started = time.monotonic()
    clock.sleep(0.2)  # nothing written: the whole interval
    assert time.monotonic() - started >= 0.19
    wake.notify(write_end)
    wake.notify(write_end)  # two messages before it looked: one wake-up, both bytes read
    started = time.monotonic()
    clock.sleep(5)
    assert time.monotonic() - started < 1
    started = time.monotonic()
    clock.sleep(0.2)
    assert time.monotonic() - started >= 0.19
    os.close(write_end)  # the SuperNode is gone: sleeps are plain sleeps from then on
    clock.sleep(0.01)
    started = time.monotonic()
    clock.sleep(0.2)
    assert time.monotonic() - started >= 0.19
    assert clock.monotonic() > 0  # every other time function is the real module's
    os.close(read_end)


def test_notify_never_blocks_the_supernode() -> None:
    read_end, write_end = wake.pipe()
    for _ in range(100_000):  # far more than a pipe holds: the writes that do not fit are dropped
        wake.notify(write_end)
    os.close(read_end)
    wake.notify(write_end)  # the SuperExec is gone: no error either
    os.close(write_end)


def test_install_patches_this_flowers_superexec_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails when a Flower upgrade changes the SuperExec's loop: agents would then poll as before."""
    from flwr.supercore.superexec import run_superexec as module

    monkeypatch.setattr(module, "time", module.time)  # restored after the test
    monkeypatch.delenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", raising=False)
    read_end, write_end = wake.pipe()
    try:
        assert wake.install(read_end)
        assert isinstance(module.time, wake.WakeClock)
        assert module._get_task_poll_interval() == wake.FALLBACK_POLL_S
    finally:
        os.close(read_end)
        os.close(write_end)
        os.environ.pop("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", None)


def test_the_supernode_pull_hook_calls_back_when_a_message_is_stored() -> None:
    from flwr.supernode import start_client_internal as module

    from fedops_flower.warmapps import pull

    saved = module.time, module._pull_and_store_message
    answers = iter([None, 7])
    calls: list[int] = []
    try:
        module._pull_and_store_message = lambda *a, **k: next(answers)
        assert pull.install(on_message=lambda: calls.append(1)) is not None
        assert module._pull_and_store_message() is None and calls == []
        assert module._pull_and_store_message() == 7 and calls == [1]
    finally:
        module.time, module._pull_and_store_message = saved


def _title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


@pytest.mark.integration
def test_a_spare_imports_before_any_run_and_becomes_the_runs_template(tmp_path: Path) -> None:
    """A spare (a fork of the agent's fork server, in a group of its own) imports the task's
    frameworks, then waits; the run's SuperExec adopts it with its environment and output, and it
    forks tasks as a template does. One per task, at most ``capacity``; stopped on close."""
    forkserver.warm(warm_apps=True)
    spares = Spares(tmp_path / "spares", capacity=1)
    try:
        first = spares.prepare("task-a", ["numpy", "no_such_framework"], None)
        assert first is not None and spares.prepare("task-a", ["numpy", "no_such_framework"], None) is first
        wait_for(lambda: spares.ready("task-a"), 60, 0.1)
        assert os.getpgid(first.process.pid) == first.process.pid  # its own group: stopped as one
        assert _title(first.process.pid).startswith("fedops-warm-spare flwr-clientapp ")
        log = (tmp_path / "spares" / "spare-1.log").read_text()
        assert "imported the app's frameworks ['numpy'], not ['no_such_framework']" in log
        # A task it was not made for, or frameworks it lacks: not handed out (and stopped).
        assert spares.take("task-b", ["numpy"]) is None
        second = spares.prepare("task-b", ["numpy"], None)  # capacity 1: task-a's spare is stopped
        wait_for(lambda: not pid_alive(first.process.pid), 10, 0.1)
        assert second is not None and spares.take("task-b", ["numpy", "torch"]) is None
        wait_for(lambda: not pid_alive(second.process.pid), 10, 0.1)
        third = spares.prepare("task-b", ["numpy"], None)
        assert third is not None
        wait_for(lambda: spares.ready("task-b"), 60, 0.1)
        taken = spares.take("task-b", ["numpy"])
        assert taken is third and spares.take("task-b", ["numpy"]) is None  # one run uses it up

        # The run's side, as the SuperExec does it, in a process with the run's environment and log.
        run_log = tmp_path / "run.log"
        adopt = (
            "import os, sys, json\n"
            "from fedops_flower.warmapps import spare\n"
            f"conn = spare.connect({str(third.socket_path)!r}, 30)\n"
            "reader = conn.makefile('rb')\n"
            "print(json.dumps(json.loads(reader.readline())), file=sys.__stdout__, flush=True)\n"
            "conn.sendall(json.dumps({'argv': ['--clientappio-api-address', '127.0.0.1:1', '--token', 'x'],"
            " 'quiet': False}).encode() + b'\\n')\n"
            "print(json.dumps(json.loads(reader.readline())), file=sys.__stdout__, flush=True)\n"
        )
        env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "FEDOPS_MARK": "the run's"}
        with open(run_log, "wb") as out:
            done = subprocess.run([sys.executable, "-c", adopt], env=env, stdout=subprocess.PIPE, stderr=out,
                                  timeout=60, check=True)
        ready, forked = (json.loads(line) for line in done.stdout.decode().splitlines())
        assert ready == {"ready": True, "pid": third.process.pid}
        assert isinstance(forked.get("pid"), int)
        # The spare took the run's environment and output: its title shows the run's FLWR_HOME, and
        # its task (which fails to reach a SuperNode at port 1) wrote to the run's log.
        wait_for(lambda: "adopted by the run" in run_log.read_text(errors="replace"), 10, 0.1)
        # The SuperExec's end closed: the template exits, as any template does; its task too.
        wait_for(lambda: not pid_alive(third.process.pid) and not pid_alive(forked["pid"]), 30, 0.1)
        assert not third.socket_path.exists() and not spare.ready_file(third.socket_path).exists()
        socket_dir = third.socket_path.parent
    finally:
        spares.close()
    assert not socket_dir.exists()


@pytest.mark.integration
def test_a_spare_dies_with_its_agents_fork_server(tmp_path: Path) -> None:
    """An agent killed outright (SIGKILL: no shutdown) leaves no spare holding the app's frameworks
    in memory: the spare leads a session of its own, so a group stop of the agent would miss it."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fedops_agent import forkserver\n"
        "from fedops_agent.spares import Spares\n"
        "forkserver.warm(warm_apps=True)\n"
        f"spares = Spares(Path({str(tmp_path)!r}), capacity=1)\n"
        "made = spares.prepare('task-a', ['json'], None)\n"
        "print('PID', made.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert agent.stdout is not None
        line = b""
        while not line.startswith(b"PID "):  # after the agent's own log lines
            line = agent.stdout.readline()
            assert line, "the agent exited"
        pid = int(line.split()[1])
        # Its title is set once the parent-death signal is armed.
        wait_for(lambda: pid_alive(pid) and _title(pid).startswith("fedops-warm-spare"), 60, 0.1)
    finally:
        agent.kill()
        agent.wait()
    wait_for(lambda: not pid_alive(pid), 15, 0.1)


def test_connect_fails_without_a_spare_and_the_executor_forks_its_own(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        spare.connect(str(tmp_path / "none.sock"), 1)


class FakeSpares:
    """Records what the agent asks of its spares."""

    def __init__(self) -> None:
        self.prepared: list[tuple[str, list[str], Path | None]] = []
        self.taken: list[tuple[str, list[str]]] = []

    def prepare(self, task_id: str, imports: list[str], learned: Path | None) -> None:
        self.prepared.append((task_id, imports, learned))

    def take(self, task_id: str, imports: list[str]) -> None:
        self.taken.append((task_id, imports))

    def close(self) -> None:
        pass


def test_the_agent_prepares_a_spare_when_selected_and_only_with_warm_apps(tmp_path: Path) -> None:
    import asyncio

    from fedops_agent.daemon import Agent
    from fedops_common.proto import agent_pb2

    command = agent_pb2.AgentCommand(prepare_task=agent_pb2.PrepareTask(task_id="task-1",
                                                                         requirements=["numpy>=1.0", "flwr"]))
    warm = Agent("127.0.0.1:1", [], "", tmp_path / "warm", "dev-1", preload_flower=True, warm_apps=True)
    fake = FakeSpares()
    warm.spares = fake  # type: ignore[assignment]  # the real one starts processes (the test above)
    asyncio.run(warm._handle(command))
    assert len(fake.prepared) == 1
    task_id, imports, learned = fake.prepared[0]
    assert task_id == "task-1" and imports[0] == "numpy" and "flwr" not in imports
    assert learned == tmp_path / "warm" / "warm-imports" / "task-1.json"
    for cold in (Agent("127.0.0.1:1", [], "", tmp_path / "cold", "dev-2", preload_flower=True, warm_apps=False),
                 Agent("127.0.0.1:1", [], "", tmp_path / "none", "dev-3", preload_flower=True, warm_apps=True,
                       warm_spares=0)):
        assert cold.spares is None
        asyncio.run(cold._handle(command))  # nothing to do, and no error


def test_socket_dirs_left_by_killed_agents_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    """An agent killed outright cannot remove its spares' socket directory; the next agent to start a
    spare on the machine removes it, and never one whose agent still runs."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not pid_alive(gone.pid)
    left = tmp_path / f"{SOCKET_DIR_PREFIX}{gone.pid}-abc123"
    (left / "sub").mkdir(parents=True)
    (left / "1.sock").write_text("")
    live_agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"{SOCKET_DIR_PREFIX}{live_agent.pid}-def456"
        live.mkdir()
        own = tmp_path / f"{SOCKET_DIR_PREFIX}{os.getpid()}-ghi789"
        own.mkdir()
        legacy = tmp_path / f"{SOCKET_DIR_PREFIX}k2j3h4"  # an older agent's name: no pid to check
        legacy.mkdir()
        assert sweep_left_socket_dirs(tmp_path) == [left]
        assert not left.exists() and live.is_dir() and own.is_dir() and legacy.is_dir()
    finally:
        live_agent.kill()
        live_agent.wait()
    assert sweep_left_socket_dirs(tmp_path) == [live]  # its agent is gone now
