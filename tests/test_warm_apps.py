"""Warm app processes (fedops_flower/warmapps): real runs whose ClientApps are forks of a per-run
template, with agents started with ``--warm-apps``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedops_common.proc import pid_alive, scan_processes
from fedops_control.devstack import LocalStack
from fedops_control.run.launcher import CLAIMED_BY
from fedops_flower.warmapps import gates, gridwake, inline
from tests.test_e2e import get_run, wait_finished, wait_for, wait_gone

pytestmark = pytest.mark.e2e
APPS = Path(__file__).parent / "apps"
# The app styles of tests/test_app_styles.py, and a scikit-learn app (NumPyClient, as Flower's
# sklearn quickstart writes it).
STYLES = ("legacy_workflow", "legacy_serverfn", "legacy_analytics", "message_lists", "no_message", "sklearn_logreg")
CLIENTS = 3
FORKED = re.compile(r"fedops warm apps: task \d+ forked as pid (\d+)")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Control service and 3 agents with warm apps (ServerApps and ClientApps), enrolled in one task
    per case."""
    root = tmp_path_factory.mktemp("warm")
    stack = LocalStack(root / "stack", control_args=["--warm-apps"])
    probe = APPS / "warm_probe"
    cases: dict[str, tuple[Path, list[str]]] = {
        **{style: (APPS / style, []) for style in STYLES},
        "probe": (probe, []),
        # Flower's SuperNode waits for a crashed task's reply until the task's heartbeat lapses (up to
        # 2 x 30 s): the round waits that long for the crashed client's error reply.
        "crash": (probe, ["--hp", "crash-round=1", "--round-timeout", "120"]),
        "opt_out": (probe, ["--client-config", "fedops-warm-apps=false"]),
    }
    try:
        stack.start_control()
        tasks = {}
        for name, (app, extra) in cases.items():
            args = ["task", "create", "--title", name, "--app", str(app), "--rounds", "2", "--min-clients", "2",
                    "--round-timeout", "60", "--client-config", "partition-id=${client.index}",
                    "--client-max-restarts", "0", *extra]
            tasks[name] = stack.ctl_json(*args)["id"]
        for i in range(CLIENTS):
            data = root / f"data{i}"
            data.mkdir()
            stack.start_agent(f"warm{i}", list(tasks.values()), data, extra_args=["--warm-apps"])
        clients = [stack.client_id(f"warm{i}") for i in range(CLIENTS)]
        wait_for(lambda: all(c["state"] == "CLIENT_STATE_ONLINE" for c in stack.ctl_json("clients", "list")["clients"]),
                 30)
        for task_id in tasks.values():
            stack.ctl("task", "select", task_id, *clients)
        yield {"stack": stack, "tasks": tasks, "clients": clients}
    finally:
        stack.stop()


def run_to_end(fleet: dict[str, Any], case: str) -> dict[str, Any]:
    run = fleet["stack"].ctl_json("run", "start", fleet["tasks"][case])
    return wait_finished(fleet["stack"], run["id"], 240)


def supernode_logs(fleet: dict[str, Any], run_id: str) -> list[str]:
    """Each agent's SuperNode log of the run (its SuperExec and the template write there too)."""
    stack: LocalStack = fleet["stack"]
    paths = [stack.root / "agents" / f"warm{i}" / "runs" / run_id / "supernode.log" for i in range(CLIENTS)]
    return [path.read_text(errors="replace") if path.exists() else "" for path in paths]


def run_events(fleet: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    watched = fleet["stack"].ctl("--output", "json", "run", "watch", run_id).stdout
    return [json.loads(line) for line in watched.splitlines()]


def superlink_log(fleet: dict[str, Any], run_id: str) -> str:
    """The run's SuperLink log (its SuperExec, ServerApp template and ServerApp write there too)."""
    stack: LocalStack = fleet["stack"]
    return (stack.root / "control" / "runs" / run_id / "superlink.log").read_text(errors="replace")


def app_processes(root: Path) -> list[str]:
    """Command lines of the templates and ClientApp tasks under ``root``, read from /proc (a ``ps``
    listing may cut long lines at the terminal width)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in line and ("fedops-warm-template" in line or "flwr-clientapp" in line):
            found.append(line)
    return found


def results(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for r in run.get("rounds", []) for c in r.get("client_results", [])]


def by_number(run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(r.get("number", 0)): r for r in run.get("rounds", [])}


def test_selecting_clients_for_a_task_starts_their_spare_templates(fleet: dict[str, Any]) -> None:
    """``task select`` sends each selected agent the app's dependencies (``PrepareTask``), and the
    agent starts a spare ClientApp template that imports them before any run (the first test of the
    module: the fixture's last selection, the opt-out task, is the one each agent prepared)."""
    stack: LocalStack = fleet["stack"]
    spares = wait_for(lambda: ready_spares(stack), 120, 0.2)
    for i in range(CLIENTS):
        logs = (stack.root / "agents" / f"warm{i}" / "warm-spares").glob("spare-*.log")
        assert any(re.search(r"imported the app's frameworks \[[^]]*'numpy'", log.read_text()) for log in logs)
    assert all(Path(f"/proc/{pid}").exists() for pid in spares)


@pytest.mark.parametrize("style", STYLES)
def test_each_style_completes_with_forked_clientapps(fleet: dict[str, Any], style: str) -> None:
    run = run_to_end(fleet, style)
    assert run["outcome"] == "RUN_OUTCOME_COMPLETED", run.get("reason")
    if style != "no_message":  # the run's FAB was unpacked and checked once per agent (warmapps/fabcache.py)
        stack: LocalStack = fleet["stack"]
        marks = [list((stack.root / "agents" / f"warm{i}" / "runs" / run["id"]).glob("**/.fedops-installed/*"))
                 for i in range(CLIENTS)]
        assert all(len(found) == 1 for found in marks), marks
    for text in supernode_logs(fleet, run["id"]):
        assert "fedops warm apps: template ready" in text
        # Every ClientApp task was a fork of the template (a ServerApp that sends nothing starts none).
        assert bool(FORKED.search(text)) == (style != "no_message")
        assert "falling back" not in text
        assert "Traceback" not in text, text[-3000:]
        assert inline.INSTALLED_MARK in text  # its Runtime API's steps on its event loop (warmapps/inline.py)
    if style == "sklearn_logreg":  # its declared frameworks were in every template before the first message
        logs = supernode_logs(fleet, run["id"])
        assert all("imported the app's frameworks ['sklearn', 'numpy']" in text for text in logs)
        accuracy = [c["metrics"]["accuracy"] for c in results(run) if c["phase"] == "evaluate"]
        assert len(accuracy) == 2 * CLIENTS and min(accuracy) > 0.2, accuracy  # chance is 0.1
    # The ServerApp was a fork of the run's ServerApp template too, and its start event says so.
    text = superlink_log(fleet, run["id"])
    assert "template ready: flwr-serverapp" in text and FORKED.search(text), text[-3000:]
    assert "falling back" not in text
    # The run's SuperLink woke its Grid, gated its one-API middlewares and ran its in-memory request
    # steps in place (warmapps/gridwake.py, gates.py, inline.py).
    assert all(mark in text for mark in (gridwake.INSTALLED_MARK, gates.INSTALLED_MARK, inline.INSTALLED_MARK)), \
        text[:2000]
    started = [e for e in run_events(fleet, run["id"]) if e["kind"] == "app_started"]
    assert [e["message"] for e in started] == ["ServerApp started (a fork of the warm template)"]


def test_each_message_is_a_fresh_fork_with_the_app_preloaded(fleet: dict[str, Any]) -> None:
    """Module-level state never reaches the next message; every task is its own process, forked
    (not started) by the template, which imported the app after the first task, with what it
    inherited frozen for the garbage collector; prints are captured."""
    run = run_to_end(fleet, "probe")
    assert run["outcome"] == "RUN_OUTCOME_COMPLETED", run.get("reason")
    done = [c for c in results(run) if c["phase"] in ("train", "evaluate")]
    assert len(done) == 2 * 2 * CLIENTS and not any(c.get("error") for c in done)
    assert all(c["metrics"]["handled-in-process"] == 1 for c in done)
    # What a task inherits from its template (Flower, numpy, the app) is frozen: no collection walks it.
    assert all(c["metrics"]["gc-frozen"] > 10_000 for c in done), [c["metrics"]["gc-frozen"] for c in done]
    pids = [int(c["metrics"]["pid"]) for c in done]
    assert len(set(pids)) == len(pids)
    logs = supernode_logs(fleet, run["id"])
    forked = {int(p) for text in logs for p in FORKED.findall(text)}
    assert set(pids) <= forked
    assert all("modules of the app's first task" in text for text in logs)
    # The probe declares numpy: the template imported it before the first message. So did the run's
    # ServerApp template, which was started (as the spare) after the previous run declared numpy too.
    assert all("imported the app's frameworks ['numpy']" in text for text in logs)
    # (The spare holds the frameworks of the apps run before it too: numpy and sklearn here.)
    server_frameworks = re.search(r"imported the app's frameworks (\[.*?\])", superlink_log(fleet, run["id"]))
    assert server_frameworks and "'numpy'" in server_frameworks.group(1)
    # The app's own print() of each forked task is in the agent's logs (logger "app", stream stdout).
    stack: LocalStack = fleet["stack"]
    found = subprocess.run(["grep", "-rlE", "--include=*.jsonl", "warm-probe client [0-9]: training round 2",
                            str(stack.root / "agents")], capture_output=True, text=True).stdout.split()
    assert len(found) == CLIENTS and all("/telemetry/logs/fedops-clientapp-" in path for path in found), found


def test_the_next_run_of_a_task_starts_with_the_library_modules_its_first_run_learned(
        fleet: dict[str, Any]) -> None:
    """The template keeps the library modules the run's first task imported (scikit-learn's
    submodules here), not the app's own (the next run may bring them changed), in the agent's state;
    the task's next run imports them before its first message."""
    stack: LocalStack = fleet["stack"]
    task_id = fleet["tasks"]["sklearn_logreg"]
    first = run_to_end(fleet, "sklearn_logreg")  # the style test may have run it before: the same either way
    assert first["outcome"] == "RUN_OUTCOME_COMPLETED", first.get("reason")
    for i in range(CLIENTS):
        kept = json.loads((stack.root / "agents" / f"warm{i}" / "warm-imports" / f"{task_id}.json").read_text())
        assert kept["modules"] and not any(name.startswith("sklearn_logreg_app") for name in kept["modules"]), kept
    second = run_to_end(fleet, "sklearn_logreg")
    assert second["outcome"] == "RUN_OUTCOME_COMPLETED", second.get("reason")
    for text in supernode_logs(fleet, second["id"]):
        learned = re.search(r"imported (\d+) modules learned in an earlier run", text)
        assert learned and int(learned.group(1)) > 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]


def test_hard_crash_fails_only_its_own_reply(fleet: dict[str, Any]) -> None:
    """Client 0 calls os._exit in round 1's train: that reply is missing, the round goes on with the
    others (quorum 2), the template survives, and client 0 trains again in round 2."""
    run = run_to_end(fleet, "crash")
    assert run["outcome"] == "RUN_OUTCOME_COMPLETED", run.get("reason")
    rounds = by_number(run)
    ok = {n: {c["client_id"] for c in rounds[n]["client_results"] if c["phase"] == "train" and not c.get("error")}
          for n in (1, 2)}
    logs = supernode_logs(fleet, run["id"])
    crashed = [i for i, text in enumerate(logs) if "exited with code 7" in text]
    assert len(crashed) == 1, "the template saw its task's exit code"
    first = fleet["clients"][crashed[0]]  # agents warm0..2 are clients[0..2]
    assert first not in ok[1] and len(ok[1]) == CLIENTS - 1
    assert ok[2] == set(fleet["clients"])
    text = logs[crashed[0]]
    assert "template ready" in text and text.count("template ready") == 1  # not rebuilt: it survived


def test_hard_stop_leaves_no_template_or_task(fleet: dict[str, Any]) -> None:
    stack: LocalStack = fleet["stack"]
    run = stack.ctl_json("run", "start", fleet["tasks"]["probe"])
    wait_for(lambda: any(FORKED.search(text) for text in supernode_logs(fleet, run["id"])), 120)
    try:
        assert any("fedops-warm-template" in line for line in app_processes(stack.root))
    finally:
        stack.ctl("run", "stop", run["id"], "--hard")
    final = get_run(stack, run["id"])
    assert final["state"] == "RUN_STATE_FINISHED" and final["outcome"] == "RUN_OUTCOME_STOPPED"
    # The control service answers once the run's SuperLink, SuperExec (in a session of its own),
    # ServerApp template and ServerApp are gone; the agents stop their SuperNodes when told.
    claimed = [spare for spare in (stack.root / "control" / "superlinks").glob("spare-*")
               if (spare / CLAIMED_BY).exists() and (spare / CLAIMED_BY).read_text() == run["id"]]
    assert len(claimed) <= 1
    # The warm spare it took, or its own SuperLink when the run started before the previous run's
    # SuperLink had stopped (a new spare starts only then).
    superlink = claimed[0] if claimed else stack.root / "control" / "runs" / run["id"]
    assert (superlink / "superlink.log").exists()
    assert [cmdline for _, _, cmdline in scan_processes() if f"{superlink}/".encode() in cmdline] == []
    # Templates and tasks included: their titles hold "flwr-" and the stack's directory (the new spare's
    # ServerApp template is the spare's, as the spare SuperLink is).
    wait_gone(stack, run["id"], 30)
    wait_for(lambda: all(not c.get("current_run_id") for c in stack.ctl_json("clients", "list")["clients"]), 30)


def ready_spares(stack: LocalStack) -> list[int]:
    """The pids of the agents' spare ClientApp templates that have imported everything (one per
    agent), or [] until every agent has one."""
    import psutil

    found = []
    for agent in stack.agents.values():
        for process in psutil.Process(agent.pid).children(recursive=True):
            try:
                words = " ".join(process.cmdline()).split()
            except psutil.Error:
                continue
            if words[:1] == ["fedops-warm-spare"] and Path(words[-1] + ".ready").exists():
                found.append(process.pid)
    return found if len(found) == CLIENTS else []


def test_a_tasks_next_run_adopts_the_spares_its_agents_prepared(fleet: dict[str, Any]) -> None:
    """When a run of a task ends, each agent starts a spare ClientApp template for the task's next
    run (fedops_agent/spares.py); that run's SuperExecs adopt them, so its first message waits for
    no import, and a hard stop of the run leaves none of them."""
    stack: LocalStack = fleet["stack"]
    first = run_to_end(fleet, "probe")
    assert first["outcome"] == "RUN_OUTCOME_COMPLETED", first.get("reason")
    spares = wait_for(lambda: ready_spares(stack), 120, 0.2)
    run = stack.ctl_json("run", "start", fleet["tasks"]["probe"])
    try:
        def all_forked() -> list[str]:
            texts = supernode_logs(fleet, run["id"])
            return texts if all(FORKED.search(text) for text in texts) else []

        logs = wait_for(all_forked, 120, 0.2)
    finally:
        stack.ctl("run", "stop", run["id"], "--hard")
    adopted = {int(pid) for text in logs
               for pid in re.findall(r"template ready: flwr-clientapp pid (\d+) \(the agent's spare\)", text)}
    assert adopted == set(spares), logs[0][-3000:]
    assert all("adopted by the run" in text for text in logs)
    wait_for(lambda: not any(pid_alive(pid) for pid in adopted), 30, 0.2)
    wait_gone(stack, run["id"], 30)


def test_task_opt_out_runs_flowers_own_executor(fleet: dict[str, Any]) -> None:
    run = run_to_end(fleet, "opt_out")
    assert run["outcome"] == "RUN_OUTCOME_COMPLETED", run.get("reason")
    assert all(c["metrics"]["handled-in-process"] == 1 for c in results(run) if c["phase"] == "train")
    for text in supernode_logs(fleet, run["id"]):
        assert "fedops warm apps" not in text


def test_killed_template_is_rebuilt(fleet: dict[str, Any]) -> None:
    """A template killed mid-run (out of memory, an operator) is rebuilt as a new process before the
    next task, and the run completes."""
    stack: LocalStack = fleet["stack"]
    run = stack.ctl_json("run", "start", fleet["tasks"]["probe"])
    ready = re.compile(r"template ready: flwr-clientapp pid (\d+)")
    text = wait_for(lambda: (t := supernode_logs(fleet, run["id"])[0]) and FORKED.search(t) and t, 120, 0.2)
    match = ready.search(text)
    assert match
    subprocess.run(["kill", "-9", match.group(1)], check=True)
    final = wait_finished(stack, run["id"], 240)
    assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
    text = supernode_logs(fleet, run["id"])[0]
    assert "rebuilding it" in text and len(ready.findall(text)) == 2


def test_template_starts_with_the_superexec_and_stops_with_its_group(tmp_path: Path) -> None:
    """The template is ready while the SuperNode is still joining (no SuperLink here at all), is the
    SuperExec's child in the run's process group, and a stop leaves none of them."""
    from fedops_agent import forkserver
    from fedops_agent.supernode import start_supernode, stop_supernode
    from fedops_common.net import free_port
    from fedops_common.proc import pid_alive

    forkserver.warm(warm_apps=True)
    workdir = tmp_path / "run-9"
    node = start_supernode("run-9", f"127.0.0.1:{free_port()}", {}, workdir, forked=True, warm_apps=True,
                           warm_imports=["numpy", "no_such_framework"])
    log_path = workdir / "supernode.log"
    try:
        text = wait_for(lambda: log_path.exists() and "template ready" in (t := log_path.read_text()) and t, 60, 0.1)
        # The app's frameworks are imported before the template says it is ready (one that is not
        # installed is named, and the template is ready all the same); the SuperNode's pulls are fast.
        assert "imported the app's frameworks ['numpy'], not ['no_such_framework']" in text
        assert "SuperNode pull interval shortened: 0.1 s for 30 s after a message" in text
        pid = int(re.findall(r"template ready: flwr-clientapp pid (\d+)", text)[0])
        assert os.getpgid(pid) == node.process.pid
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(f"FLWR_HOME={workdir / 'flwr'} ".encode())
    finally:
        stop_supernode(node, hard=False)
    wait_for(lambda: not pid_alive(pid) and app_processes(workdir) == [], 10, 0.1)


def test_template_that_cannot_be_built_falls_back_to_flowers_executor(caplog: pytest.LogCaptureFixture) -> None:
    """A task type the template cannot run (here: one it has no entry point for) is logged as a
    fallback and launched by Flower's SubprocessExecutor.

    Checked on the log record, not on stderr: Flower's console handler writes to the stream
    that was ``sys.stderr`` when ``flwr`` was first imported, which in a whole-suite run is
    pytest's session capture, not this test's file descriptor 2.
    """
    from flwr.supercore.constant import TaskType

    from fedops_flower.warmapps.executor import FALLBACK_MARK, WarmExecutor

    executor = WarmExecutor(frozenset({TaskType.SIMULATION}))
    try:
        assert executor._templates == {TaskType.SIMULATION: None}
    finally:
        executor.close()
    assert FALLBACK_MARK in caplog.text


def test_template_not_ready_in_time_falls_back_and_the_run_says_so(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A device whose template is not ready within FEDOPS_WARM_TEMPLATE_TIMEOUT_S runs its ClientApps
    with Flower's own executor: the run completes, and its events name the client that fell back.
    Warm apps are on by default; a third agent and the control service opt out (``--no-warm-apps``):
    their apps are new processes, and no fallback is reported for an agent that opted out."""
    stack = LocalStack(tmp_path / "stack", control_args=["--no-warm-apps"])
    try:
        stack.start_control()
        task = stack.ctl_json("task", "create", "--title", "slow", "--app", str(APPS / "warm_probe"), "--rounds", "1",
                              "--min-clients", "2", "--round-timeout", "60",
                              "--client-config", "partition-id=${client.index}")["id"]
        for name in ("fast", "slow", "cold"):
            (tmp_path / name).mkdir()
            if name == "slow":
                monkeypatch.setenv("FEDOPS_WARM_TEMPLATE_TIMEOUT_S", "0.001")
            stack.start_agent(name, [task], tmp_path / name, extra_args=["--no-warm-apps"] if name == "cold" else [])
            monkeypatch.delenv("FEDOPS_WARM_TEMPLATE_TIMEOUT_S", raising=False)
        fast, slow, cold = stack.client_id("fast"), stack.client_id("slow"), stack.client_id("cold")
        wait_for(lambda: sum(c["state"] == "CLIENT_STATE_ONLINE" for c in stack.ctl_json("clients", "list")["clients"])
                 == 3, 30)
        stack.ctl("task", "select", task, fast, slow, cold)
        run = stack.ctl_json("run", "start", task)
        final = wait_finished(stack, run["id"], 240)
        assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
        events = run_events({"stack": stack}, run["id"])
        assert [e["message"] for e in events if e["kind"] == "app_started"] == ["ServerApp started"]  # not warm here
        fell_back = [e for e in events if e["kind"] == "warm_apps_fallback"]
        assert [e["client_id"] for e in fell_back] == [slow], fell_back
        assert "not ready within 0.001 s (FEDOPS_WARM_TEMPLATE_TIMEOUT_S)" in fell_back[0]["message"]
        # All clients trained; the slow and cold ones' ClientApps were new processes, the fast one's forks.
        trained = {c["client_id"] for c in results(final) if c["phase"] == "train" and not c.get("error")}
        assert trained == {fast, slow, cold}
        logs = {name: (stack.root / "agents" / name / "runs" / run["id"] / "supernode.log").read_text()
                for name in ("fast", "slow", "cold")}
        assert FORKED.search(logs["fast"]) and not FORKED.search(logs["slow"])
        assert "fedops warm apps" not in logs["cold"]
    finally:
        stack.stop()
