"""Overview: tasks, active runs, clients online/training/failed."""

import streamlit as st

from fedops_dash.ui import attempt, control, metrics_table, page, short

page("Overview")
ctl = control()
tasks = attempt("Listing tasks", ctl.tasks, [])
runs = attempt("Listing runs", ctl.runs, [])
clients = attempt("Listing clients", ctl.clients, [])
states = [short(c.get("state", "")) for c in clients]
active = [r for r in runs if short(r.get("state", "")) in ("pending", "starting", "running")]
cols = st.columns(5)
cols[0].metric("Tasks", len(tasks))
cols[1].metric("Active runs", len(active))
cols[2].metric("Clients online", states.count("online"))
cols[3].metric("Clients training", states.count("training"))
cols[4].metric("Clients failed", states.count("failed"))
st.subheader("Active runs")
metrics_table([{"run": r["id"], "task": r["task_id"], "state": short(r["state"]),
                "round": f"{r.get('current_round', 0)}/{r.get('total_rounds', 0)}"} for r in active])
st.subheader("Recent runs")
metrics_table([{"run": r["id"], "task": r["task_id"], "state": short(r["state"]),
                "outcome": short(r.get("outcome", "")), "rounds": r.get("total_rounds", 0),
                "reason": r.get("reason", "")} for r in runs[:20]])
st.subheader("Tasks")
metrics_table([{"task": t["id"], "title": t["title"], "tags": ", ".join(t.get("tags", [])),
                "rounds": t["strategy"].get("rounds", 0), "enrolled": len(t.get("enrolled_client_ids", [])),
                "selected": len(t.get("selected_client_ids", []))} for t in tasks])
