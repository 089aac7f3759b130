"""Where each round's wall time goes, from the timings FedOps records (run events and client durations).

Why: most of a round can pass outside the clients' handlers, and nothing showed where. A round is cut
at its recorded events: the step's messages sent (``round_phase``), the step's last reply in
(``phase_finished``), the next step sent, the round finished (``round_finished``). Within a step, the
slowest client's handler time (``duration_s``, measured by the ClientApp wrapper) is "client work";
the rest of the step is dispatch and transfer (sending, Flower's delivery, the replies' way back).
Between steps, and after the last one, the server aggregates (and evaluates centrally, stores the model).
"""

from __future__ import annotations

from typing import Any

from fedops_common.words import parse_time

SEGMENTS = ("before the first step", "dispatch and transfer", "client work",
            "aggregation, central evaluation, model store")


def _seconds(later: str, earlier: str) -> float:
    a, b = parse_time(later), parse_time(earlier)
    return max(0.0, (a - b).total_seconds()) if a and b else 0.0


def round_timeline(run: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{"round", "step", "segment", "seconds"}`` in time order, for the rounds that finished."""
    slowest: dict[tuple[int, str], float] = {}
    for r in run.get("rounds", []):
        for c in r.get("client_results", []):
            key = (int(r.get("number", 0)), c.get("phase", ""))
            slowest[key] = max(slowest.get(key, 0.0), float(c.get("duration_s", 0.0)))
    starts = {int(r.get("number", 0)): r.get("started_at", "") for r in run.get("rounds", [])}
    rows: list[dict[str, Any]] = []
    marks: dict[int, list[tuple[str, str, str]]] = {}  # round -> (kind, phase, time) in order
    for e in events:
        number = int(e.get("round", 0))
        if e.get("kind") in ("round_phase", "phase_finished", "round_finished"):
            marks.setdefault(number, []).append((e["kind"], (e.get("data") or {}).get("phase", ""), e.get("time", "")))
    for number, seq in sorted(marks.items()):
        if number == 0 or not seq or seq[-1][0] != "round_finished":
            continue
        last = starts.get(number, "") or seq[0][2]
        first_step = next((t for kind, _, t in seq if kind == "round_phase"), "")
        if first_step:
            rows.append({"round": number, "step": "", "segment": SEGMENTS[0], "seconds": _seconds(first_step, last)})
        sent_at, phase = "", ""
        for kind, step_phase, time in seq:
            if kind == "round_phase":
                if phase and last:  # the gap since the previous step's last reply: the server's work
                    rows.append({"round": number, "step": phase, "segment": SEGMENTS[3],
                                 "seconds": _seconds(time, last)})
                sent_at, phase = time, step_phase
            elif kind == "phase_finished" and sent_at:
                step = _seconds(time, sent_at)
                work = min(step, slowest.get((number, step_phase), 0.0))
                rows.append({"round": number, "step": step_phase, "segment": SEGMENTS[2], "seconds": work})
                rows.append({"round": number, "step": step_phase, "segment": SEGMENTS[1], "seconds": step - work})
                last, sent_at = time, ""
            elif kind == "round_finished" and last:
                rows.append({"round": number, "step": phase, "segment": SEGMENTS[3], "seconds": _seconds(time, last)})
    return rows
