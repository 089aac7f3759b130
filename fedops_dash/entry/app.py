"""FedOps control dashboard: `fedops-dash` (or `streamlit run fedops_dash/entry/app.py`).

Every page is declared here once, with its URL path (``/run?run=...``); the pages live in ``views/``.
This script sits alone in ``entry/`` because Streamlit treats a ``pages/`` folder beside its main
script as its old file-name navigation and then runs that instead of this script's ``st.navigation``
(a deep link opened first gets the folder's page of that name). ``fedops_dash/pages/`` was that
folder before the pages moved to ``views/``, and an in-place upgrade can leave it behind (a git pull
keeps its ignored ``__pycache__``, so the folder stays): beside this script no such folder ever
existed, so the dashboard does not depend on anyone deleting it.
"""

from pathlib import Path

import streamlit as st

from fedops_dash import auth
from fedops_dash.ui import VIEWS, settings

HERE = Path(__file__).parents[1]  # fedops_dash/

st.set_page_config(page_title="FedOps Stack", layout="wide")
# Streamlit's "Running… Stop" status shows at every live refresh of the Run page, beside a running FL run,
# where "Stop" reads as stopping the run. The page has its own stop buttons, so that widget is hidden.
st.html("<style>[data-testid='stStatusWidget'] {display: none;}</style>")
who = auth.identity()
auth.write_cookie()
navigation = st.navigation([st.Page(HERE / "views" / f"{name}.py", title=title, url_path=name,
                                    default=name == "overview") for name, title in VIEWS.items()],
                           position="sidebar" if who else "hidden")
if who is None:
    auth.sign_in_form()  # the URL (page and ?run=...) stays: signed in, the deep link's page shows
    st.stop()
auth.sidebar(who)
current = settings()
st.sidebar.caption(f"control {current.control}")
st.sidebar.caption(f"Elasticsearch {current.elasticsearch_url or '(not configured)'}")
st.sidebar.caption(f"Prometheus {current.prometheus_url or '(not configured)'}")
navigation.run()
