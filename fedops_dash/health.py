"""A run's health in one line: green, yellow or red, and why, naming the clients.

Why its own module: the banner is the Run page's first answer ("is my run healthy?"), and the rules
behind its colour (quorum still reachable? a straggler past its threshold?) must be tested without a
browser. It reads the run and its diagnosis as the control service returns them (JSON form).

- red: the run failed, or the current step can no longer reach its quorum (too many of the clients it
  waits for are offline or failed): who, since when, and when the round timeout fails the run;
- yellow: a client is straggling: still missing after ``STRAGGLER_FACTOR`` times the median reply time
  of the step's other clients (at least ``STRAGGLER_MIN_S``), or past half the round timeout;
- green: running normally, or completed; blue: stopped by an operator, or still starting.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass
from typing import Any

from fedops_common.convert import short_name
from fedops_common.words import count, duration, run_status

STRAGGLER_FACTOR = 3.0
STRAGGLER_MIN_S = 10.0


@dataclass(frozen=True)
class Health:
    level: str      # "green", "yellow", "red" or "blue"
    headline: str   # one plain sentence
    details: tuple[str, ...] = ()


def _at(now: dt.datetime, seconds: float) -> str:
    return (now + dt.timedelta(seconds=seconds)).strftime("%H:%M:%S")


def _replied_durations(run: dict[str, Any], round_number: int, phase: str) -> list[float]:
    for r in run.get("rounds", []):
        if r.get("number") == round_number:
            return [float(c.get("duration_s", 0.0)) for c in r.get("client_results", [])
                    if c.get("phase") == phase and not c.get("error")]
    return []


def _missing_line(m: dict[str, Any], now: dt.datetime, since: str) -> str:
    age = float(m.get("heartbeat_age_s", 0.0))
    if not m.get("connected"):
        return f"{m['client_id']} is offline since {_at(now, -age)} (last heartbeat {duration(age)} ago)"
    if short_name(m.get("state", "")) == "failed":
        return f"{m['client_id']} failed: {m.get('reason', '')}"
    return f"{m['client_id']} has not replied since {since}"


def assess(run: dict[str, Any], diagnosis: dict[str, Any] | None, now: dt.datetime | None = None) -> Health:
    """The run's health now (``now`` is UTC; given by tests)."""
    now = now or dt.datetime.now(dt.UTC)
    status = run_status(run.get("state", ""), run.get("outcome", ""))
    reason = run.get("reason", "")
    done = int(run.get("completed_rounds", 0))
    if status == "completed":
        headline = f"Completed {done} of {count(int(run.get('total_rounds', 0)), 'round')}."
        return Health("green", headline, (reason,) if reason and not reason.startswith("completed") else ())
    if status == "failed":
        return Health("red", f"Failed after {count(done, 'completed round')}: {reason or 'no reason recorded'}")
    if status == "stopped":
        return Health("blue", f"Stopped after {count(done, 'completed round')}: {reason or 'by an operator'}")
    if status in ("pending", "starting"):
        return Health("blue", "Starting: launching the SuperLink and the clients' SuperNodes.")
    if not diagnosis:
        return Health("yellow", "Running, but its diagnosis could not be read.")
    number, phase = int(diagnosis.get("round", 0)), diagnosis.get("phase", "")
    step = f"Round {number} {phase}" if phase in ("train", "evaluate") else f"Round {number + 1}"
    missing = diagnosis.get("missing", [])
    if not diagnosis.get("waiting") or not missing:
        return Health("green", f"Running: {step}, {diagnosis.get('summary', '')}".rstrip(", "))
    have, needed = int(diagnosis.get("clients_have", 0)), int(diagnosis.get("clients_needed", 0))
    elapsed, left = float(diagnosis.get("phase_elapsed_s", 0.0)), float(diagnosis.get("time_left_s", 0.0))
    since = _at(now, -elapsed)
    can_reply = [m for m in missing if m.get("connected") and short_name(m.get("state", "")) != "failed"]
    lines = tuple(_missing_line(m, now, since) for m in missing)
    if have + len(can_reply) < needed:
        return Health("red", f"{step} can no longer reach its quorum: {have} replied, {len(can_reply)} can still "
                             f"reply, {needed} needed. The run fails when the round times out, in {duration(left)} "
                             f"(at {_at(now, left)}).", lines)
    replied = _replied_durations(run, number, phase)
    threshold = max(STRAGGLER_MIN_S, STRAGGLER_FACTOR * statistics.median(replied)) if replied else None
    timeout = elapsed + left
    if (threshold is not None and elapsed > threshold) or (timeout and elapsed > timeout / 2):
        typical = f"the others replied in {duration(statistics.median(replied))} (median)" if replied else \
            "no reply yet"
        who = ", ".join(m["client_id"] for m in missing)
        return Health("yellow", f"{step}: waiting {duration(elapsed)} for {who}; {typical}. {have} of {needed} "
                                f"needed are in; {duration(left)} left before the round timeout.", lines)
    return Health("green", f"Running: {step}, {have} of {diagnosis.get('clients_expected', 0)} replies in "
                           f"({needed} needed), {duration(left)} left before the round timeout.")
