"""Clients: status, heartbeat age, data status, resource timelines."""

from typing import Any

import streamlit as st

from fedops_common.convert import short_name
from fedops_common.proto import common_pb2
from fedops_dash.backends import resource_timeline
from fedops_dash.ui import (
    attempt,
    control,
    elasticsearch_or_notice,
    metrics_table,
    page,
    pick,
)

page("Clients")
ctl = control()
f1, f2 = st.columns(2)
state_name = f1.selectbox("State", ["any", "online", "training", "finished", "failed", "offline"], key="client-state")
state = 0 if state_name == "any" else common_pb2.ClientState.Value(f"CLIENT_STATE_{state_name.upper()}")
tokens = st.session_state.setdefault(f"client-pages-{state_name}", [""])  # page tokens seen, for going back
listing: dict[str, Any] = attempt(
    "Listing clients", lambda: ctl.client_page(state=state, page_size=100, page_token=tokens[-1]), {"clients": []})
clients = listing["clients"]
f2.caption(f"{len(clients)} of {listing.get('total_size', len(clients))} clients"
           + (f", page {len(tokens)}" if len(tokens) > 1 or listing.get("next_page_token") else ""))
b1, b2 = f2.columns(2)
if b1.button("Previous page", disabled=len(tokens) == 1):
    tokens.pop()
    st.rerun()
if b2.button("Next page", disabled=not listing.get("next_page_token")):
    tokens.append(listing["next_page_token"])
    st.rerun()
metrics_table([{"client": c["id"], "host": c["device"].get("hostname", ""), "state": short_name(c.get("state", "")),
                "reason": c.get("state_reason", ""), "heartbeat age s": round(c.get("heartbeat_age_s", -1), 1),
                "run": c.get("current_run_id", ""), "tasks": ", ".join(c.get("enrolled_task_ids", []))}
               for c in clients])
client_id = pick("Client", [c["id"] for c in clients], "client")
if client_id is None:
    st.info("No client has registered yet: start `fedops-agent`.")
    st.stop()
client = next(c for c in clients if c["id"] == client_id)
st.caption(f"device {client['device'].get('device_id', '')}, {client['device'].get('os', '')}, "
           f"{client['device'].get('cpu_count', '?')} CPUs, metrics at {client.get('metrics_address') or '-'}")

st.subheader("Data status (aggregates only)")
status = client.get("data_status", {})
summary = status.get("summary", {})
if summary:
    d1, d2, d3, d4 = st.columns(4)
    d1.metric("Samples", int(summary.get("sample_count", 0)))
    d2.metric("Features", int(summary.get("feature_count", 0)))
    d3.metric("Missing", f"{summary.get('missing_ratio', 0):.1%}")
    d4.metric("Freshness", f"{summary.get('freshness_s', -1):.0f} s")
    histogram = summary.get("label_histogram", {})
    if histogram:
        st.bar_chart([{"label": k, "count": v} for k, v in histogram.items()], x="label", y="count")
    st.caption(f"schema {summary.get('schema_hash', '')}; reported for run {status.get('run_id') or '(enrolment)'} "
               f"round {status.get('round', 0)}")
else:
    st.caption("no data status reported yet")

st.subheader("Resources")
es_url = elasticsearch_or_notice("the resource timeline")
if es_url:
    samples = attempt("Reading resource samples", lambda: resource_timeline(es_url, client["id"]), [])
    if samples:
        st.line_chart([{"time": s["@timestamp"][11:19], "CPU usage": s.get("host.cpu.usage", 0),
                        "memory usage": s.get("system.memory.used.pct", 0)} for s in samples], x="time")
        st.line_chart(
            [
                {"time": s["@timestamp"][11:19], "agent + SuperNode RSS MiB": s.get("process.memory.rss", 0) / 2**20}
                for s in samples
            ],
            x="time",
        )
        st.caption(f"{len(samples)} samples; model versions: "
                   f"{sorted({s.get('fedops.model.version', 0) for s in samples})}")
    else:
        st.caption("no resource samples yet")
