"""Helpers every page uses: backends from the environment, notices when one is absent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st
from prometheus_client import Counter

from fedops_common.logging import get_logger
from fedops_dash.backends import BackendError, Control, Settings

T = TypeVar("T")
D = TypeVar("D")
log = get_logger("fedops_dash")
BACKEND_ERRORS = Counter("fedops_dash_backend_errors", "Dashboard calls that failed, by what was attempted", ["what"])
ACTIONS = Counter("fedops_dash_actions", "State-changing actions taken from the dashboard", ["action"])


def page(name: str) -> None:
    """Title the page and log the view with the ids it was opened for (the dashboard's access log)."""
    st.header(name)
    ids = {key: st.query_params.get(query) for key, query in (("run_id", "run"), ("task_id", "task"),
                                                             ("client_id", "client"))}
    log.info("page viewed", page=name, **{k: v for k, v in ids.items() if v})


def settings() -> Settings:
    return Settings.from_env()


def control() -> Control:
    return Control(settings().control)


def attempt(what: str, action: Callable[[], T], default: D) -> T | D:
    """Run a backend call; on failure show a clear notice and go on with ``default``."""
    try:
        return action()
    except BackendError as err:
        log.warning("dashboard backend call failed", what=what, error=str(err))
        BACKEND_ERRORS.labels(what).inc()
        st.error(f"{what} failed: {err}")
        return default


def acted(action: str, **ids: Any) -> None:
    """Log (with ids) and count a state-changing action taken from the dashboard."""
    log.info(f"dashboard: {action}", **ids)
    ACTIONS.labels(action).inc()


def elasticsearch_or_notice(purpose: str) -> str:
    """The Elasticsearch URL, or "" after a notice saying what is unavailable without it."""
    url = settings().elasticsearch_url
    if not url:
        st.info(f"Elasticsearch is not configured (FEDOPS_ELASTICSEARCH_URL), so {purpose} is unavailable. "
                "Telemetry stays in each actor's local JSON-lines files.")
    return url


def pick(label: str, options: list[str], query_key: str, key: str | None = None) -> str | None:
    """A selectbox whose default comes from the page URL (?run=..., ?task=...)."""
    if not options:
        return None
    wanted = st.query_params.get(query_key)
    index = options.index(wanted) if wanted in options else 0
    return st.selectbox(label, options, index=index, key=key or f"pick-{query_key}")


def pick_or_stop(label: str, items: list[dict[str, Any]], query_key: str, empty: str,
                 read: Callable[[str], T], key: str | None = None) -> T:
    """Choose one item by id (default from the URL) and read it in full; stop the page with ``empty``
    when there is none, or after the error notice when it cannot be read."""
    chosen = pick(label, [item["id"] for item in items], query_key, key)
    if chosen is None:
        st.info(empty)
        st.stop()
    value = attempt(f"Reading {label.lower()} {chosen}", lambda: read(chosen), None)
    if value is None:
        st.stop()
    return value


def metric_cells(scalars: dict[str, Any] | None, lists: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """A row's metric cells from a message's scalar map and list map (JSON form): lists as text."""
    cells: dict[str, Any] = {f"{prefix}{k}": v for k, v in (scalars or {}).items()}
    for name, value in (lists or {}).items():
        cells[f"{prefix}{name}"] = "[" + ", ".join(f"{v:.3g}" for v in value.get("values", [])) + "]"
    return cells


def metrics_table(rows: list[dict[str, Any]]) -> None:
    if rows:
        st.dataframe(rows, width="stretch", hide_index=True)
    else:
        st.caption("nothing yet")
