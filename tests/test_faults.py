"""Faults with real processes: an unreachable quorum, a control service restart, telemetry backends down."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import control_stack
from tests.test_e2e import create_task, get_run, start_clients, wait_finished, wait_for

pytestmark = pytest.mark.e2e
ROUND_TIMEOUT_S = 20


def test_unreachable_quorum_fails_within_the_round_timeout_with_a_diagnosis(tmp_path: Path,
                                                                            digits_data: list[Path]) -> None:
    with control_stack(tmp_path / "quorum") as stack:
        task_id = create_task(stack, rounds=3, timeout_s=ROUND_TIMEOUT_S, quorum=2)
        clients = start_clients(stack, task_id, digits_data[:2], "q")
        run = stack.ctl_json("run", "start", task_id)
        wait_for(lambda: any(r.get("phase") == "train" for r in get_run(stack, run["id"]).get("rounds", [])), 120, 0.2)
        stack.kill_agent("q1")  # 1 of 2 clients left, quorum 2: the round can never count
        killed_at = time.monotonic()
        # Once the surviving client has replied, the diagnosis names exactly the one that cannot.
        diagnosis = wait_for(lambda: (d := stack.ctl_json("run", "diagnose", run["id"])).get("missing")
                             and [m["client_id"] for m in d["missing"]] == [clients[1]] and d, ROUND_TIMEOUT_S, 0.5)
        assert diagnosis["clients_needed"] == 2 and 0 < diagnosis["time_left_s"] <= ROUND_TIMEOUT_S
        assert clients[1] in diagnosis["summary"]
        final = wait_finished(stack, run["id"], timeout_s=ROUND_TIMEOUT_S + 60)
        assert time.monotonic() - killed_at < ROUND_TIMEOUT_S + 45  # not Flower's hour-long default
        assert final["outcome"] == "RUN_OUTCOME_FAILED" and "quorum" in final["reason"], final.get("reason")
        assert clients[1] in final["rounds"][0]["failed_client_ids"]
        after = stack.ctl_json("run", "diagnose", run["id"])
        assert not after.get("waiting") and "failed" in after["summary"].lower()


def test_control_service_restart_mid_run(tmp_path: Path, digits_data: list[Path]) -> None:
    """SIGTERM the control service after round 1 and start it again on the same port and state:
    the run goes on, agents reconnect, the run finishes with a complete history."""
    from fedops_common.proc import stop_process_group

    with control_stack(tmp_path / "restart") as stack:
        task_id = create_task(stack, rounds=3, timeout_s=120, quorum=2)
        clients = start_clients(stack, task_id, digits_data[:2], "r")
        run = stack.ctl_json("run", "start", task_id)
        wait_for(lambda: any(r.get("phase") == "done" for r in get_run(stack, run["id"]).get("rounds", [])), 180, 0.2)
        assert stack.control is not None
        port = int(stack.control_address.rsplit(":", 1)[1])
        stop_process_group(stack.control, grace_s=15)
        time.sleep(2)
        stack.start_control(port=port)
        final = wait_finished(stack, run["id"], timeout_s=300)
        assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
        assert [r["number"] for r in final["rounds"]] == [1, 2, 3]
        assert all(sorted(r["responded_client_ids"]) == sorted(clients) for r in final["rounds"])
        assert sorted(m["round"] for m in stack.ctl_json("models", "list", "--run", run["id"])["models"]) == [1, 2, 3]
        events = [e["kind"] for e in map(json.loads, stack.ctl("--output", "json", "run", "watch", run["id"])
                                          .stdout.splitlines())]
        assert "control_restarted" in events and events[-1] == "run_finished"
        assert "client_failed" not in events
        states = wait_for(lambda: (c := stack.ctl_json("clients", "list", "--task", task_id)["clients"])
                          and all(x["state"] != "CLIENT_STATE_OFFLINE" for x in c) and c, 60)
        assert {c["state"] for c in states} <= {"CLIENT_STATE_ONLINE", "CLIENT_STATE_FINISHED"}


def test_control_service_and_superlink_lost_mid_run_the_run_is_launched_again(tmp_path: Path,
                                                                               digits_data: list[Path]) -> None:
    """Kill the control service and the run's SuperLink and ServerApp after round 1, as a restart of
    their machine or container does: the restarted service launches the run again on a new SuperLink
    from round 1's model, the agents replace their SuperNodes, and rounds 2 and 3 complete the run."""
    from fedops_common.proc import scan_processes

    with control_stack(tmp_path / "lost") as stack:
        task_id = create_task(stack, rounds=3, timeout_s=120, quorum=2)
        clients = start_clients(stack, task_id, digits_data[:2], "l")
        run = stack.ctl_json("run", "start", task_id)
        wait_for(lambda: any(r.get("phase") == "done" for r in get_run(stack, run["id"]).get("rounds", [])), 180, 0.2)
        assert stack.control is not None
        port = int(stack.control_address.rsplit(":", 1)[1])
        os.killpg(stack.control.pid, signal.SIGKILL)
        marker = f"{stack.root / 'control'}/".encode()  # the SuperLink, its gateway and ServerApp
        groups = {os.getpgid(pid) for pid, _, cmdline in scan_processes() if marker in cmdline}
        assert groups, "the run's SuperLink was not found"
        for group in groups:
            os.killpg(group, signal.SIGKILL)
        stack.start_control(port=port)
        final = wait_finished(stack, run["id"], timeout_s=300)
        assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
        assert final["completed_rounds"] == 3
        assert [r["number"] for r in final["rounds"]] == [1, 2, 3]
        assert all(sorted(r["responded_client_ids"]) == sorted(clients) for r in final["rounds"])
        models = sorted(stack.ctl_json("models", "list", "--run", run["id"])["models"], key=lambda m: m["round"])
        assert [m["round"] for m in models] == [1, 2, 3]
        assert models[1]["parent_id"] == models[0]["id"]  # round 2 trained on round 1's model
        events = list(map(json.loads, stack.ctl("--output", "json", "run", "watch", run["id"]).stdout.splitlines()))
        relaunched = [e for e in events if e["kind"] == "relaunched"]
        assert len(relaunched) == 1 and "rounds 2-3 again from model" in relaunched[0]["message"]
        assert events[-1]["kind"] == "run_finished"
        for name in ("l0", "l1"):
            logs = stack.root / "agents" / name / "telemetry" / "logs"
            assert "replacing its SuperNode" in "".join(p.read_text() for p in logs.glob("*.jsonl"))


def test_elasticsearch_and_prometheus_restarted_during_a_run(tmp_path: Path, digits_data: list[Path]) -> None:
    """Both telemetry backends go down after round 1 and come back: training is unaffected, every
    spooled document reaches Elasticsearch once, and Prometheus' counters are whole again."""
    import shutil
    import tempfile

    from tests.backends import Elasticsearch, Prometheus, prometheus_config, wait_until

    es = Elasticsearch(Path(tempfile.mkdtemp(prefix="fedops-es-"))).start()
    prometheus = Prometheus(tmp_path / "prometheus")
    try:
        with control_stack(tmp_path / "stack", elasticsearch_url=es.url) as stack:
            prometheus.start(prometheus_config(stack.metrics_address))
            task_id = create_task(stack, rounds=3, timeout_s=120, quorum=2)
            start_clients(stack, task_id, digits_data[:2], "t")
            run = stack.ctl_json("run", "start", task_id)
            wait_for(lambda: any(r.get("phase") == "done" for r in get_run(stack, run["id"]).get("rounds", [])),
                     180, 0.2)
            es.stop()
            prometheus.stop()
            time.sleep(15)
            es.start()
            prometheus.start(prometheus_config(stack.metrics_address))
            final = wait_finished(stack, run["id"])
            assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
            assert len(final["rounds"]) == 3
            # Poll: the newest sample may still be one scraped before the last round completed.
            rounds = wait_until(lambda: (r := prometheus.query(f'fedops_rounds_completed_total{{task_id="{task_id}"}}'))
                                and float(r[0]["value"][1]) == 3 and r, 60, "Prometheus to scrape all 3 rounds")
            assert float(rounds[0]["value"][1]) == 3
            events = len(stack.ctl("--output", "json", "run", "watch", run["id"]).stdout.splitlines())
        # The stack has stopped (each actor flushes its shipper on exit): every line every actor spooled,
        # during the outage too, is in Elasticsearch exactly once.
        spool = [p for p in (tmp_path / "stack").glob("**/telemetry/*/*.jsonl") if ".shipper" not in p.parts]
        lines = sum(sum(1 for line in path.open() if line.strip()) for path in spool)
        wait_until(lambda: es.count("fedops-*") == lines, 60, f"all {lines} spooled documents in Elasticsearch")
        assert es.count("fedops-run-events", {"term": {"fedops.run.id": run["id"]}}) == events
    finally:
        prometheus.stop()
        es.stop()
        shutil.rmtree(es.root, ignore_errors=True)


def test_failed_client_is_restarted_with_backoff_and_rejoins(tmp_path: Path, digits_data: list[Path]) -> None:
    """Kill one client's SuperNode (not its agent) after round 1: the agent restarts it per the task's
    retry policy, the same identity rejoins, and the client takes part in the last round again."""
    import os
    import signal

    from fedops_common.proc import scan_processes

    with control_stack(tmp_path / "retry") as stack:
        # Flower releases a crashed node after 60 s; a round that sent it a message waits for it at
        # most its timeout. With warm apps and spare templates a round takes about 2 s here: 25 rounds
        # keep the run going well past the release, so the restarted node rejoins for the last rounds
        # (5 rounds ended 55 s after the kill, before it could).
        task_id = create_task(stack, rounds=25, timeout_s=45, quorum=2)
        policy = stack.ctl_json("task", "update", task_id, "--client-max-restarts", "3",
                                "--client-restart-backoff", "0.5")["strategy"]
        assert (policy["client_max_restarts"], policy["client_restart_backoff_s"]) == (3, 0.5)
        clients = start_clients(stack, task_id, digits_data, "t")
        run = stack.ctl_json("run", "start", task_id)
        wait_for(lambda: any(r.get("phase") == "done" for r in get_run(stack, run["id"]).get("rounds", [])), 180, 0.2)
        agent_dir = str(stack.root / "agents" / "t2").encode()
        supernodes = [pid for pid, _, cmdline in scan_processes()
                      if b"flower-supernode" in cmdline and agent_dir in cmdline]
        assert supernodes, "the SuperNode of agent t2 was not found"
        for pid in supernodes:
            os.killpg(pid, signal.SIGKILL)
        final = wait_finished(stack, run["id"], timeout_s=300)
        assert final["outcome"] == "RUN_OUTCOME_COMPLETED", final.get("reason")
        assert clients[2] in final["rounds"][-1]["responded_client_ids"], final["rounds"][-1]
        logs = stack.root / "agents" / "t2" / "telemetry" / "logs"
        agent_log = "".join(p.read_text() for p in logs.glob("*.jsonl"))
        assert "restart 1/3 in 0.5s" in agent_log and "SuperNode restarted for run" in agent_log
        assert "restart 2/3" not in agent_log  # waiting for Flower to release the node spends no retry
        assert stack.ctl_json("clients", "show", clients[2])["state"] != "CLIENT_STATE_FAILED"
