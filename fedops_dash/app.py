"""FedOps control dashboard: `fedops-dash` (or `streamlit run fedops_dash/app.py`)."""

from pathlib import Path

import streamlit as st

from fedops_dash.ui import settings

PAGES = Path(__file__).parent / "pages"

st.set_page_config(page_title="FedOps Stack", layout="wide")
navigation = st.navigation([
    st.Page(PAGES / "overview.py", title="Overview", default=True),
    st.Page(PAGES / "tasks.py", title="Tasks"),
    st.Page(PAGES / "run.py", title="Run"),
    st.Page(PAGES / "clients.py", title="Clients"),
    st.Page(PAGES / "models.py", title="Models"),
    st.Page(PAGES / "logs.py", title="Logs"),
])
current = settings()
st.sidebar.caption(f"control {current.control}")
st.sidebar.caption(f"Elasticsearch {current.elasticsearch_url or '(not configured)'}")
st.sidebar.caption(f"Prometheus {current.prometheus_url or '(not configured)'}")
navigation.run()
