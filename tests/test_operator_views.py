"""What the operator reads, without servers: the run-health banner in every state, the round timeline,
the shared words, CLI tables at 80 columns, and the dashboard's default identity."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console

from fedops_cli.columns import ID, NUMBER, TEXT, Column, print_table
from fedops_common import words
from fedops_dash.cli import default_identity
from fedops_dash.health import assess
from fedops_dash.timeline import round_timeline

NOW = dt.datetime(2026, 11, 30, 8, 0, 0, tzinfo=dt.UTC)


def running(round_number: int = 2, phase: str = "train", durations: dict[str, float] | None = None) -> dict[str, Any]:
    results = [{"client_id": cid, "phase": phase, "duration_s": d} for cid, d in (durations or {}).items()]
    return {"id": "run-1", "state": "RUN_STATE_RUNNING", "total_rounds": 3, "completed_rounds": round_number - 1,
            "current_round": round_number, "rounds": [{"number": round_number, "client_results": results}]}


def waiting(missing: list[dict[str, Any]], have: int, needed: int = 2, expected: int = 3, elapsed: float = 5.0,
            left: float = 115.0) -> dict[str, Any]:
    return {"round": 2, "phase": "train", "waiting": True, "clients_have": have, "clients_needed": needed,
            "clients_expected": expected, "missing": missing, "phase_elapsed_s": elapsed, "time_left_s": left}


PENDING = {"client_id": "client-c", "state": "CLIENT_STATE_TRAINING", "connected": True, "heartbeat_age_s": 1.0}
OFFLINE = {"client_id": "client-b", "state": "CLIENT_STATE_TRAINING", "connected": False, "heartbeat_age_s": 40.0}
FAILED = {"client_id": "client-c", "state": "CLIENT_STATE_FAILED", "connected": True, "heartbeat_age_s": 1.0,
          "reason": "failed: ModuleNotFoundError: No module named 'tqdm'"}


def test_health_running_normally_is_green() -> None:
    health = assess(running(durations={"client-a": 2.0, "client-b": 2.5}), waiting([PENDING], have=2), NOW)
    assert health.level == "green"
    assert health.headline == ("Running: Round 2 train, 2 of 3 replies in (2 needed), 1 min 55 s left before the "
                               "round timeout.")


def test_health_straggler_past_the_threshold_is_yellow_and_named() -> None:
    run = running(durations={"client-a": 2.0, "client-b": 3.0})
    health = assess(run, waiting([PENDING], have=2, elapsed=30.0, left=90.0), NOW)
    assert health.level == "yellow"
    assert "waiting 30.0 s for client-c" in health.headline and "2.5 s (median)" in health.headline
    assert health.details == ("client-c has not replied since 07:59:30",)
    # Below the threshold (max(10 s, 3 x the median)) the same wait is normal.
    assert assess(run, waiting([PENDING], have=2, elapsed=7.0, left=113.0), NOW).level == "green"


def test_health_quorum_lost_is_red_with_who_since_when_and_when_it_fails() -> None:
    health = assess(running(durations={"client-a": 2.0}), waiting([OFFLINE, FAILED], have=1, elapsed=20.0,
                                                                   left=100.0), NOW)
    assert health.level == "red"
    assert health.headline == ("Round 2 train can no longer reach its quorum: 1 replied, 0 can still reply, 2 "
                               "needed. The run fails when the round times out, in 1 min 40 s (at 08:01:40).")
    assert health.details == ("client-b is offline since 07:59:20 (last heartbeat 40.0 s ago)",
                              "client-c failed: failed: ModuleNotFoundError: No module named 'tqdm'")


def test_health_finished_runs() -> None:
    done = {"state": "RUN_STATE_FINISHED", "completed_rounds": 3, "total_rounds": 3}
    completed = assess({**done, "outcome": "RUN_OUTCOME_COMPLETED", "reason": "completed 3 of 3 rounds"}, None, NOW)
    assert (completed.level, completed.headline, completed.details) == ("green", "Completed 3 of 3 rounds.", ())
    failed = assess({**done, "outcome": "RUN_OUTCOME_FAILED", "completed_rounds": 1, "reason": "boom"}, None, NOW)
    assert (failed.level, failed.headline) == ("red", "Failed after 1 completed round: boom")
    stopped = assess({**done, "outcome": "RUN_OUTCOME_STOPPED", "reason": "stopped by otto (hard)"}, None, NOW)
    assert (stopped.level, stopped.headline) == ("blue", "Stopped after 3 completed rounds: stopped by otto (hard)")
    assert assess({"state": "RUN_STATE_STARTING"}, None, NOW).level == "blue"


def event(kind: str, seconds: float, round_number: int = 1, phase: str = "") -> dict[str, Any]:
    time = (NOW + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return {"kind": kind, "time": time, "round": round_number, "data": {"phase": phase} if phase else {}}


def test_round_timeline_splits_wall_time_at_recorded_events() -> None:
    run = {"rounds": [{"number": 1, "started_at": NOW.isoformat().replace("+00:00", "Z"), "client_results": [
        {"client_id": "a", "phase": "train", "duration_s": 4.0},
        {"client_id": "b", "phase": "train", "duration_s": 5.0},
        {"client_id": "a", "phase": "evaluate", "duration_s": 1.0}]}]}
    events = [event("round_phase", 0.5, phase="train"), event("phase_finished", 8.5, phase="train"),
              event("round_phase", 9.0, phase="evaluate"), event("phase_finished", 11.0, phase="evaluate"),
              event("round_finished", 12.0), event("round_phase", 20.0, round_number=2, phase="train")]
    rows = round_timeline(run, events)
    assert [(r["step"], r["segment"], r["seconds"]) for r in rows] == [
        ("", "before the first step", 0.5),
        ("train", "client work", 5.0), ("train", "dispatch and transfer", 3.0),
        ("train", "aggregation, central evaluation, model store", 0.5),
        ("evaluate", "client work", 1.0), ("evaluate", "dispatch and transfer", 1.0),
        ("evaluate", "aggregation, central evaluation, model store", 1.0)]
    assert sum(r["seconds"] for r in rows) == 12.0  # the round's wall time, all of it; round 2 is unfinished


def test_words_never_show_raw_enums_or_none() -> None:
    assert words.run_status("RUN_STATE_FINISHED", "RUN_OUTCOME_STOPPED") == "stopped"
    assert words.run_status("RUN_STATE_RUNNING", "RUN_OUTCOME_UNSPECIFIED") == "running"
    assert words.client_state("CLIENT_STATE_TRAINING") == "training"
    assert words.rounds(0, 5, 0) == "not started (5 rounds)" and words.rounds(2, 0, 1) == "round 2 of ?, 1 completed"
    assert (words.count(1, "round"), words.count(0, "round")) == ("1 round", "0 rounds")
    assert [words.duration(s) for s in (None, 1.25, 125, 7440)] == ["-", "1.2 s", "2 min 05 s", "2 h 04 min"]


def table_at(width: int, columns: list[Column], rows: list[list[str]]) -> str:
    out = Console(file=io.StringIO(), width=width, color_system=None)
    print_table("t", columns, rows, out)
    return out.file.getvalue()


def test_tables_at_80_columns_keep_ids_and_numbers_and_drop_low_value_columns() -> None:
    ids = ["run-9be342d78cef", "model-62b3d0931d11"]
    columns = [Column("id", ID), Column("accuracy", NUMBER), Column("loss", NUMBER, 1), Column("why", TEXT),
               Column("participants", TEXT, 3), Column("parent", ID, 2)]
    rows = [[ids[0], "0.9123", "0.3141", "a long reason " * 4, "client-0e78481921, client-90c5c1514e", ids[1]]]
    text = table_at(80, columns, rows)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert ids[0] in text and "0.9123" in text and "0.3141" in text, text
    assert "…" not in text and "client-0e78481921" not in text, text
    assert "(left out at 80 columns: participants; widen the terminal or use --output json)" in text, text
    wide = table_at(200, columns, rows)
    assert ids[1] in wide and "client-90c5c1514e" in wide and "…" not in wide, wide


def test_dashboard_default_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_identity("", None, "127.0.0.1") == ""  # no local admin token: every session signs in
    (tmp_path / ".fedops" / "control").mkdir(parents=True)
    (tmp_path / ".fedops" / "control" / "admin.token").write_text("fop_local\n")
    assert default_identity("", None, "127.0.0.1") == "fop_local"  # like fedopsctl, on loopback
    assert default_identity("", None, "0.0.0.0") == ""  # served to the network: nobody is admin by default
    assert default_identity("fop_given", None, "0.0.0.0") == "fop_given"
    with pytest.raises(typer.BadParameter, match="cannot read"):
        default_identity("", tmp_path / "missing", "127.0.0.1")


def test_sign_in_handles_are_random_renewed_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser's cookie holds a handle, never the token; an unused handle expires, a used one is
    renewed, a dropped one is gone."""
    import time

    from fedops_dash.sessions import COOKIE, SessionStore, cookie_script

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    store = SessionStore(idle_s=60)
    first, second = store.add("fop_alice"), store.add("fop_bob")
    assert first != second and "fop_alice" not in first and len(first) >= 40
    clock[0] += 50
    assert store.token(first) == "fop_alice"  # renewed at 1050
    clock[0] += 20
    assert store.token(second) is None  # 70 s unused
    assert store.token(first) == "fop_alice"
    store.drop(first)
    assert store.token(first) is None and store.token("made-up") is None
    script = cookie_script(second, secure=True)
    assert f"{COOKIE}={second}" in script and "SameSite=Strict" in script and "Secure" in script
    assert "Max-Age" not in script  # the store's idle expiry decides, not an age counted from sign-in
    assert "Max-Age=0" in cookie_script("", secure=False) and "Secure" not in cookie_script("", secure=False)
