"""Overview: tasks, active runs, clients online/training/failed."""

import streamlit as st

from fedops_common.convert import short_name
from fedops_dash.backends import prometheus_query
from fedops_dash.ui import attempt, control, metrics_table, page, settings

page("Overview")
ctl = control()
tasks = attempt("Listing tasks", ctl.tasks, [])
runs = attempt("Listing runs", ctl.runs, [])
clients = attempt("Listing clients", ctl.clients, [])
states = [short_name(c.get("state", "")) for c in clients]
active = [r for r in runs if short_name(r.get("state", "")) in ("pending", "starting", "running")]
cols = st.columns(5)
cols[0].metric("Tasks", len(tasks))
cols[1].metric("Active runs", len(active))
cols[2].metric("Clients online", states.count("online"))
cols[3].metric("Clients training", states.count("training"))
cols[4].metric("Clients failed", states.count("failed"))
st.subheader("Active runs")
metrics_table([{"run": r["id"], "task": r["task_id"], "state": short_name(r["state"]),
                "round": f"{r.get('current_round', 0)}/{r.get('total_rounds', 0)}"} for r in active])
st.subheader("Recent runs")
metrics_table([{"run": r["id"], "task": r["task_id"], "state": short_name(r["state"]),
                "outcome": short_name(r.get("outcome", "")), "rounds": r.get("total_rounds", 0),
                "reason": r.get("reason", "")} for r in runs[:20]])
st.subheader("Tasks")
metrics_table([{"task": t["id"], "title": t["title"], "tags": ", ".join(t.get("tags", [])),
                "rounds": t["strategy"].get("rounds", 0), "enrolled": len(t.get("enrolled_client_ids", [])),
                "selected": len(t.get("selected_client_ids", []))} for t in tasks])

st.subheader("Platform metrics (Prometheus)")
prometheus_url = settings().prometheus_url
if not prometheus_url:
    st.info("Prometheus is not configured (FEDOPS_PROMETHEUS_URL), so platform metrics are unavailable.")
else:
    def value(promql: str) -> float:
        result = attempt("Querying Prometheus", lambda: prometheus_query(prometheus_url, promql), [])
        return sum(float(sample["value"][1]) for sample in result)

    p1, p2, p3 = st.columns(3)
    p1.metric("Rounds completed", int(value("sum(fedops_rounds_completed_total)")))
    p2.metric("Scrape targets up", int(value('sum(up{job=~"fedops-.*"})')))
    p3.metric("Client failures", int(value("sum(fedops_client_failures_total)")))
