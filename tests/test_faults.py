"""Faults with real processes: a quorum that can never be met."""

from __future__ import annotations

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
