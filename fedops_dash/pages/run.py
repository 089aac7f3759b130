"""Run: live round progress, global metrics per round, per-client metrics, participation, diagnosis."""

import time

import streamlit as st

from fedops_common.convert import short_name
from fedops_dash.ui import (
    attempt,
    control,
    metric_cells,
    metrics_table,
    page,
    pick_or_stop,
)

REFRESH_S = 3
page("Run")
ctl = control()
run = pick_or_stop("Run", attempt("Listing runs", ctl.runs, []), "run", "No runs yet: start one on the Tasks page.",
                   ctl.run)
run_id = run["id"]
state, outcome = short_name(run.get("state", "")), short_name(run.get("outcome", ""))
current, total = int(run.get("current_round", 0)), int(run.get("total_rounds", 0))
st.markdown(f"**{run_id}** of task `{run['task_id']}`: **{state}**" + (f" ({outcome})" if outcome else "")
            + (f" — {run['reason']}" if run.get("reason") else ""))
completed = int(run.get("completed_rounds", 0))
st.progress(min(completed / total, 1.0) if total else 0.0,
            text=f"round {current} of {total or '?'}, {completed} completed")
notes = []
if run.get("api_style"):
    notes.append(f"observed as **{short_name(run['api_style']).replace('_', ' ')}**")
if run.get("app_decides"):
    notes.append("the app hard-codes " + ", ".join(f"`strategy.{s}`" for s in run["app_decides"]))
if run.get("model_note"):
    notes.append(f"models: {run['model_note']}")
if notes:
    st.caption("; ".join(notes))

rounds = run.get("rounds", [])
global_rows = []
if run.get("initial_central_metrics"):
    global_rows.append({"round": 0, **{f"central {k}": v for k, v in run["initial_central_metrics"].items()}})
for r in rounds:
    row = {"round": r["number"]}
    for scope in ("central", "train", "evaluate"):
        row.update(metric_cells(r.get(f"{scope}_metrics"), r.get(f"{scope}_metric_lists"), f"{scope} "))
    global_rows.append(row)
st.subheader("Global model per round")
if global_rows:
    loss_acc = [{k: v for k, v in row.items() if k == "round" or k in ("central loss", "central accuracy")}
                for row in global_rows]
    st.line_chart(loss_acc, x="round")
metrics_table(global_rows)

st.subheader("Participation per round")
metrics_table([{"round": r["number"], "phase": r.get("phase", ""),
                "selected": ", ".join(r.get("selected_client_ids", [])),
                "responded": ", ".join(r.get("responded_client_ids", [])),
                "failed": ", ".join(r.get("failed_client_ids", [])),
                "model": r.get("model_version_id", "")} for r in rounds])

st.subheader("Per-client local metrics")
metrics_table([{"round": r["number"], "client": c.get("client_id", ""), "phase": c.get("phase", ""),
                "duration s": round(c.get("duration_s", 0.0), 2), "error": c.get("error", ""),
                **metric_cells(c.get("metrics"), c.get("metric_lists"))}
               for r in rounds for c in r.get("client_results", [])])

st.subheader("Diagnosis")
diagnosis = attempt("Diagnosing", lambda: ctl.diagnose(run_id), None)
if diagnosis:
    (st.warning if diagnosis.get("waiting") else st.info)(diagnosis.get("summary", ""))
    if diagnosis.get("missing"):
        metrics_table(diagnosis["missing"])

with st.expander("Events"):
    metrics_table([{"seq": e.get("seq"), "time": e.get("time", "")[:19], "kind": e.get("kind"),
                    "round": e.get("round", 0), "client": e.get("client_id", ""), "message": e.get("message", "")}
                   for e in attempt("Reading events", lambda: ctl.events(run_id), [])])

if state != "finished":  # live: follow the run until it finishes
    time.sleep(REFRESH_S)
    st.rerun()
