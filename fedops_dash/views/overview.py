"""Overview: tasks, active runs, clients online/training/offline/failed, newest runs first.

A counter whose source could not be read says "unavailable", never 0: an empty platform and an
unreachable one must not look alike."""

from typing import Any

import streamlit as st

from fedops_common.words import client_state, clock, run_status
from fedops_dash.backends import prometheus_query
from fedops_dash.ui import attempt, control, metrics_table, newest_first, page, paged, settings, url

UNAVAILABLE = "unavailable"
page("Overview")
ctl = control()
tasks: list[dict[str, Any]] | None = attempt("Listing tasks", ctl.tasks, None)
runs: list[dict[str, Any]] | None = attempt("Listing runs", ctl.runs, None)
clients: list[dict[str, Any]] | None = attempt("Listing clients", ctl.clients, None)
states = [client_state(c.get("state", "")) for c in clients or []]
active = [r for r in runs or [] if run_status(r.get("state", "")) in ("pending", "starting", "running")]
titles = {t["id"]: t.get("title", "") for t in tasks or []}


def count(source: list[Any] | None, value: int) -> int | str:
    return UNAVAILABLE if source is None else value


cols = st.columns(7)
cols[0].metric("Tasks", count(tasks, len(tasks or [])))
cols[1].metric("Active runs", count(runs, len(active)))
for column, state in zip(cols[2:], ("online", "training", "finished", "offline", "failed"), strict=True):
    column.metric(f"Clients {state}", count(clients, states.count(state)))


def run_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"run": url("run", r["id"]), "task": titles.get(r["task_id"]) or r["task_id"],
             "status": run_status(r.get("state", ""), r.get("outcome", "")),
             "round": f"{r.get('current_round', 0)} of {r.get('total_rounds', 0) or '?'}",
             "started": clock(r.get("started_at") or r.get("created_at", "")), "reason": r.get("reason", "")}
            for r in items]


st.subheader("Active runs")
metrics_table(run_rows(newest_first(active)), links={"run": "run"})
st.subheader("Recent runs (newest first)")
metrics_table(run_rows(paged(newest_first(runs or []), "runs")), links={"run": "run"})
st.subheader("Tasks")
metrics_table([{"task": url("task", t["id"]), "title": t["title"], "tags": ", ".join(t.get("tags", [])),
                "rounds": t["strategy"].get("rounds", 0), "enrolled": len(t.get("enrolled_client_ids", [])),
                "selected": len(t.get("selected_client_ids", [])), "created": clock(t.get("created_at", ""))}
               for t in newest_first(tasks or [])], links={"task": "task"})

st.subheader("Platform metrics (Prometheus)")
prometheus_url = settings().prometheus_url
if not prometheus_url:
    st.info("Prometheus is not configured (FEDOPS_PROMETHEUS_URL), so platform metrics are unavailable.")
else:
    def value(promql: str) -> int | str:
        result = attempt("Querying Prometheus", lambda: prometheus_query(prometheus_url, promql), None)
        return UNAVAILABLE if result is None else int(sum(float(sample["value"][1]) for sample in result))

    p1, p2, p3 = st.columns(3)
    p1.metric("Rounds completed", value("sum(fedops_rounds_completed_total)"))
    p2.metric("Scrape targets up", value('sum(up{job=~"fedops-.*"})'))
    p3.metric("Client failures", value("sum(fedops_client_failures_total)"))
