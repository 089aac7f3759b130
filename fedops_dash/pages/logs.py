"""Logs: search every actor's logs in Elasticsearch by client, run, round, level and text."""

import streamlit as st

from fedops_dash.backends import search_logs
from fedops_dash.ui import attempt, elasticsearch_or_notice, metrics_table, page

page("Logs")
es_url = elasticsearch_or_notice("log search")
if es_url:
    with st.form("log-search"):
        c1, c2, c3, c4 = st.columns(4)
        client_id = c1.text_input("Client", st.query_params.get("client", ""))
        run_id = c2.text_input("Run", st.query_params.get("run", ""))
        round_text = c3.text_input("Round")
        level = c4.selectbox("Level", ["", "debug", "info", "warning", "error", "critical"])
        text = st.text_input("Text")
        st.form_submit_button("Search")
    round_number = int(round_text) if round_text.strip().isdigit() else None
    if round_text.strip() and round_number is None:
        st.error("Round must be a whole number")
    hits = attempt("Searching logs", lambda: search_logs(es_url, client_id.strip(), run_id.strip(), round_number,
                                                         level, text.strip()), [])
    st.caption(f"{len(hits)} newest matching lines")
    metrics_table([{"time": h.get("@timestamp", "")[:23], "level": h.get("log.level", ""),
                    "service": h.get("service.name", ""), "client": h.get("fedops.client.id", ""),
                    "run": h.get("fedops.run.id", ""), "round": str(h.get("fedops.round", "")),  # one type per column
                    "message": h.get("message", "")} for h in hits])
