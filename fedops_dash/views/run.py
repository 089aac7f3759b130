"""Run: health at a glance, stop with confirmation, global and per-client charts, round timeline,
participation, diagnosis and events. Live while the run is active."""

import datetime as dt

import streamlit as st

from fedops_common.convert import short_name
from fedops_common.words import client_state, clock, duration, parse_time, rounds, run_status
from fedops_dash import charts
from fedops_dash.health import assess
from fedops_dash.timeline import round_timeline
from fedops_dash.ui import (
    acted,
    attempt,
    control,
    link,
    logs_url,
    metric_cells,
    metrics_table,
    newest_first,
    page,
    pick_or_stop,
    run_label,
    url,
)

REFRESH_S = 3
BANNER = {"green": st.success, "yellow": st.warning, "red": st.error, "blue": st.info}
page("Run")
ctl = control()
titles = {t["id"]: t.get("title", "") for t in attempt("Listing tasks", ctl.tasks, [])}
runs = newest_first(attempt("Listing runs", ctl.runs, []))
run = pick_or_stop("Run", runs, "run", "No runs yet: start one on the Tasks page.", ctl.run,
                   labels={r["id"]: run_label(r, titles) for r in runs})


def show(run_id: str, was_active: bool) -> None:
    """Everything below the picker; re-read every REFRESH_S while the run is active (a fragment, so the
    page is not rebuilt and a pending stop confirmation stays)."""
    run = attempt(f"Reading run {run_id}", lambda: ctl.run(run_id), None)
    if run is None:
        return
    status = run_status(run.get("state", ""), run.get("outcome", ""))
    active = status in ("pending", "starting", "running")
    diagnosis = attempt("Diagnosing", lambda: ctl.diagnose(run_id), None)
    events = attempt("Reading events", lambda: ctl.events(run_id), [])

    # ------------------------------------------------------------------ health, times, actions
    health = assess(run, diagnosis)
    BANNER[health.level](f"**{health.headline}**")
    for line in health.details:
        st.markdown(f"- {line}")
    started, finished = parse_time(run.get("started_at", "")), parse_time(run.get("finished_at", ""))
    elapsed = ((finished or dt.datetime.now(dt.UTC)) - started).total_seconds() if started else None
    stop_event = next((e for e in events if e.get("kind") == "stop_requested"), None)
    st.markdown(" · ".join(part for part in (
        f"task {link('task', run['task_id'], titles.get(run['task_id']) or run['task_id'])}",
        f"started {clock(run.get('started_at', ''))}",
        f"ended {clock(run.get('finished_at', ''))}" if finished else "not ended",
        f"{'took' if finished else 'running for'} {duration(elapsed)}",
        f"stop requested {clock(stop_event['time'])}: {stop_event.get('message', '')}" if stop_event else "",
        f"[logs]({logs_url(run_id)})", f"[models]({url('model', '', task=run['task_id'], run=run_id)})",
    ) if part))
    total, completed = int(run.get("total_rounds", 0)), int(run.get("completed_rounds", 0))
    st.progress(min(completed / total, 1.0) if total else 0.0,
                text=rounds(int(run.get("current_round", 0)), total, completed))

    if active:
        pending = st.session_state.get("confirm-stop")
        s1, s2, _ = st.columns([1, 1, 3])
        if s1.button("Stop after this round", key="stop-soft"):
            st.session_state["confirm-stop"] = pending = "soft"
        if s2.button("Stop now", key="stop-hard"):
            st.session_state["confirm-stop"] = pending = "hard"
        if pending:
            what = "after the current round" if pending == "soft" else "now, killing its processes"
            st.warning(f"Stop run {run_id} {what}?")
            c1, c2, _ = st.columns([1, 1, 3])
            if c1.button("Yes, stop the run", key="stop-confirm", type="primary"):
                st.session_state.pop("confirm-stop", None)
                if attempt("Stopping", lambda: ctl.stop_run(run_id, hard=pending == "hard"), None):
                    acted("run stop requested" if pending == "soft" else "run stopped", run_id=run_id)
                    st.success("Stop requested" if pending == "soft" else "Stopped")
            if c2.button("Cancel", key="stop-cancel"):
                st.session_state.pop("confirm-stop", None)
                st.rerun()

    notes = []
    if run.get("api_style"):
        notes.append(f"observed as **{short_name(run['api_style']).replace('_', ' ')}**")
    if run.get("app_decides"):
        notes.append("the app hard-codes " + ", ".join(f"`strategy.{s}`" for s in run["app_decides"]))
    if run.get("model_note"):
        notes.append(f"models: {run['model_note']}")
    if notes:
        st.caption("; ".join(notes))

    # ------------------------------------------------------------------ global model
    rounds_ = run.get("rounds", [])
    global_rows = []
    if run.get("initial_central_metrics"):
        global_rows.append({"round": 0, **{f"central {k}": v for k, v in run["initial_central_metrics"].items()}})
    for r in rounds_:
        row = {"round": r["number"]}
        for scope in ("central", "train", "evaluate"):
            row.update(metric_cells(r.get(f"{scope}_metrics"), r.get(f"{scope}_metric_lists"), f"{scope} "))
        global_rows.append(row)
    st.subheader("Global model per round")
    series = [{"round": row["round"], "metric": name, "value": value} for row in global_rows
              for name, value in row.items() if name != "round" and isinstance(value, int | float)]
    g1, g2 = st.columns(2)
    with g1:
        charts.lines([s for s in series if "loss" in s["metric"]], "round", "value", "metric", "Loss (lower is better)",
                     "loss")
    with g2:
        charts.lines([s for s in series if "loss" not in s["metric"]], "round", "value", "metric",
                     "Accuracy and other metrics", "value")
    metrics_table(global_rows)

    # ------------------------------------------------------------------ per client
    st.subheader("Per client")
    results = [{"round": r["number"], "client": c.get("client_id", ""), "phase": c.get("phase", ""),
                "duration s": round(c.get("duration_s", 0.0), 2), "error": c.get("error", ""),
                **metric_cells(c.get("metrics"), c.get("metric_lists"))}
               for r in rounds_ for c in r.get("client_results", [])]
    names = sorted({f"{row['phase']} {k}" for row in results for k, v in row.items()
                    if k not in ("round", "client", "phase", "duration s", "error") and isinstance(v, int | float)})
    if names:
        default = next((i for i, n in enumerate(names) if "accuracy" in n), 0)
        chosen = st.selectbox("Local metric", names, index=default, key="client-metric")
        phase, metric = chosen.split(" ", 1)
        p1, p2 = st.columns(2)
        with p1:
            charts.lines([{"round": row["round"], "client": row["client"], metric: row[metric]} for row in results
                          if row["phase"] == phase and metric in row], "round", metric, "client",
                         f"Local {chosen} per client")
        with p2:
            charts.grouped_bars([{"round": row["round"], "client": row["client"], "seconds": row["duration s"]}
                                 for row in results if row["phase"] == "train"], "round", "seconds", "client",
                                "Train time per client per round (stragglers stand out)", "seconds")
    metrics_table([{**row, "client": url("client", row["client"])} for row in results], links={"client": "client"})

    st.subheader("Round timeline")
    timeline = round_timeline(run, events)
    if timeline:
        charts.stacked_timeline(timeline, "Where each round's wall time went")
        st.caption("From recorded events and each client's handler time: dispatch and transfer is a step's time beyond "
                   "its slowest client's work; aggregation is the server's time between steps and after the last.")
    else:
        st.caption("no finished round yet")

    st.subheader("Participation per round")
    metrics_table([{"round": r["number"], "phase": r.get("phase", ""),
                    "selected": ", ".join(r.get("selected_client_ids", [])),
                    "responded": ", ".join(r.get("responded_client_ids", [])),
                    "failed": ", ".join(r.get("failed_client_ids", [])),
                    "model": (url("model", r["model_version_id"], task=run["task_id"])
                              if r.get("model_version_id") else ""),
                    "logs": logs_url(run_id, round_number=r["number"])} for r in rounds_],
                  links={"model": "model", "logs": "logs"})

    st.subheader("Diagnosis")
    if diagnosis:
        (st.warning if diagnosis.get("waiting") else st.info)(diagnosis.get("summary", ""))
        if diagnosis.get("missing"):
            metrics_table([{"client": url("client", m["client_id"]), "state": client_state(m.get("state", "")),
                            "connected": bool(m.get("connected")), "heartbeat age": duration(m.get("heartbeat_age_s")),
                            "reason": m.get("reason", "")} for m in diagnosis["missing"]], links={"client": "client"})

    with st.expander("Events"):
        metrics_table([{"seq": e.get("seq"), "time": clock(e.get("time", "")), "kind": e.get("kind"),
                        "round": e.get("round", 0), "client": e.get("client_id", ""), "message": e.get("message", "")}
                       for e in events])
    if was_active and not active:  # it just finished: draw the page once more, without the timer
        st.rerun()


initially_active = run_status(run.get("state", ""), run.get("outcome", "")) in ("pending", "starting", "running")
st.fragment(run_every=REFRESH_S if initially_active else None)(show)(run["id"], initially_active)
