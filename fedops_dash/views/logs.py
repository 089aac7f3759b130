"""Logs: every actor's logs in Elasticsearch, by run, client and round (pickers), level or above and
text; transport noise and the dashboard's own access log kept apart; full messages, live tail, download."""

import json
import time

import streamlit as st

from fedops_common.telemetry.queries import LEVELS
from fedops_common.words import client_state, run_status
from fedops_dash.backends import search_logs
from fedops_dash.ui import attempt, control, elasticsearch_or_notice, metrics_table, newest_first, page, url

TAIL_S = 3
page("Logs")
es_url = elasticsearch_or_notice("log search")
if not es_url:
    st.stop()
ctl = control()
runs = newest_first(attempt("Listing runs", ctl.runs, []))
clients = attempt("Listing clients", ctl.clients, [])
run_labels = {"": "every run", **{r["id"]: f"{r['id']} · {run_status(r.get('state', ''), r.get('outcome', ''))}"
                                  for r in runs}}
client_labels = {"": "every client", **{c["id"]: f"{c['id']} · {c['device'].get('hostname', '')} · "
                                        f"{client_state(c.get('state', ''))}" for c in clients}}


def choice(labels: dict[str, str], query: str) -> int:
    wanted = st.query_params.get(query, "")
    if wanted and wanted not in labels:
        labels[wanted] = wanted  # a deep link to something not listed (e.g. an older run)
    return list(labels).index(wanted) if wanted in labels else 0


c1, c2, c3, c4 = st.columns([3, 3, 1, 1])
run_index, client_index = choice(run_labels, "run"), choice(client_labels, "client")
run_id = c1.selectbox("Run", list(run_labels), index=run_index, format_func=lambda k: run_labels[k]) or ""
client_id = c2.selectbox("Client", list(client_labels), index=client_index,
                         format_func=lambda k: client_labels[k]) or ""
chosen_run = next((r for r in runs if r["id"] == run_id), None)
round_options = ["every round", *[str(n) for n in range(int((chosen_run or {}).get("total_rounds", 0)) + 1)]]
wanted_round = st.query_params.get("round", "")
if wanted_round and wanted_round not in round_options:
    round_options.append(wanted_round)
round_text = c3.selectbox("Round", round_options, index=round_options.index(wanted_round) if wanted_round else 0) or ""
level = c4.selectbox("Level or above", LEVELS, index=1) or "info"
t1, t2, t3, t4 = st.columns([4, 2, 1, 1])
text = t1.text_input("Text")
stream = t2.radio("Stream", ["platform", "access"], horizontal=True,
                  format_func={"platform": "platform logs", "access": "dashboard access log"}.get)
transport = t3.checkbox("Transport noise", help="Flower's HTTP polling lines (httpx) at INFO")
tail = t4.toggle("Live tail", help=f"re-read every {TAIL_S} s")
st.query_params.update({k: v for k, v in (("run", run_id), ("client", client_id)) if v})
round_number = int(round_text) if round_text.isdigit() else None
hits = attempt("Searching logs", lambda: search_logs(
    es_url, client_id, run_id, round_number, level, text.strip(), size=500, transport=transport, stream=stream,
    oldest_first=round_number is not None), [])
order = "oldest first (one round)" if round_number is not None else "newest first"
st.caption(f"{len(hits)} lines, {order}, level {level} or above")
rows = [{"time": h.get("@timestamp", "")[:23].replace("T", " "), "level": h.get("log.level", ""),
         "service": h.get("service.name", ""),
         "client": url("client", h["fedops.client.id"]) if h.get("fedops.client.id") else "",
         "run": url("run", h["fedops.run.id"]) if h.get("fedops.run.id") else "",
         "round": "" if h.get("fedops.round") is None else str(h["fedops.round"]),  # one type per column
         "message": h.get("message", "") + (f"\n{h['error.stack_trace']}" if h.get("error.stack_trace") else "")}
        for h in hits]
metrics_table(rows, links={"client": "client", "run": "run"})
with st.expander("Full messages"):
    st.code("\n".join(f"{r['time']} {r['level']:<8} {r['service']} {r['message']}" for r in rows) or "(none)",
            language=None, wrap_lines=True)
st.download_button("Download these lines (JSON lines)", "\n".join(json.dumps(h, sort_keys=True) for h in hits),
                   file_name=f"fedops-logs{'-' + run_id if run_id else ''}.jsonl", mime="application/x-ndjson")
if tail:
    time.sleep(TAIL_S)
    st.rerun()
