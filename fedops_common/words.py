"""The words every tool uses for states, outcomes, rounds and durations (API text, fedopsctl, dashboard).

Why one module: the same run must read the same in a terminal and in a browser, and raw enum names
(``CLIENT_STATE_TRAINING``) or ``round None`` must never reach an operator.
"""

from __future__ import annotations

import datetime as dt

from fedops_common.convert import short_name


def run_status(state: str, outcome: str = "") -> str:
    """One word for where a run is: its outcome once finished (completed, stopped, failed), else its state.
    Takes enum names (``RUN_STATE_FINISHED``, ``RUN_OUTCOME_FAILED``) as the JSON form of a Run has them."""
    if short_name(state) == "finished":
        return short_name(outcome) or "finished"
    return short_name(state) or "unknown"


def client_state(state: str) -> str:
    """``CLIENT_STATE_TRAINING`` -> ``training``. Offline means the agent is not connected (it may come
    back); failed means its work failed (the reason says why)."""
    return short_name(state) or "unknown"


# Client states in the order tools show them side by side (group sizes, counters).
CLIENT_STATES = ("online", "training", "finished", "failed", "offline")


def role(name: str) -> str:
    """``ROLE_OPERATOR`` -> ``operator``."""
    return short_name(name) or "none"


def rounds(current: int, total: int, completed: int) -> str:
    """``round 2 of 5, 1 completed``; before the first round ``not started (5 rounds)``."""
    of = str(total) if total else "?"
    if not current:
        return f"not started ({count(total, 'round') if total else '? rounds'})"
    return f"round {current} of {of}, {completed} completed"


def count(n: int, noun: str) -> str:
    """``1 round``, ``2 rounds``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def duration(seconds: float | None) -> str:
    """``42.0 s``, ``3 min 05 s``, ``2 h 04 min``; ``-`` when unknown."""
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def parse_time(value: str) -> dt.datetime | None:
    """An RFC 3339 timestamp of a message's JSON form (``2026-11-30T07:45:00.123Z``), as aware UTC."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def clock(value: str) -> str:
    """``2026-11-30 07:45:00`` (UTC) from a JSON timestamp; ``-`` when unset."""
    when = parse_time(value)
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else "-"
