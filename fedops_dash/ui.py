"""Helpers every page uses: backends from the environment, notices when one is absent, links and pickers."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st
from prometheus_client import Counter

from fedops_common.logging import get_logger
from fedops_common.words import clock, run_status
from fedops_dash import auth
from fedops_dash.backends import BackendError, Control, Settings

T = TypeVar("T")
D = TypeVar("D")
log = get_logger("fedops_dash")
# The dashboard's access log ("page viewed", who, which ids) is its own stream (labels.stream=access),
# so the Logs page can keep it apart from the platform's logs.
access_log = get_logger("fedops_dash.access").bind(stream="access")
# Every page: its file in views/ and URL path, and its title (entry/app.py declares the navigation from this).
VIEWS = {"overview": "Overview", "tasks": "Tasks", "run": "Run", "clients": "Clients", "models": "Models",
         "logs": "Logs"}
# What each kind of id links to: the page, and the query parameter that opens it there.
LINKS = {"run": ("run", "run"), "task": ("tasks", "task"), "client": ("clients", "client"),
         "model": ("models", "model")}
BACKEND_ERRORS = Counter("fedops_dash_backend_errors", "Dashboard calls that failed, by what was attempted", ["what"])
ACTIONS = Counter("fedops_dash_actions", "State-changing actions taken from the dashboard", ["action"])


def page(name: str) -> None:
    """Title the page and log the view with the ids it was opened for (the dashboard's access log)."""
    st.header(name)
    ids = {key: st.query_params.get(query) for key, query in (("run_id", "run"), ("task_id", "task"),
                                                             ("client_id", "client"))}
    who = st.session_state.get(auth.IDENTITY) or {}
    access_log.info("page viewed", page=name, user=who.get("name", ""), **{k: v for k, v in ids.items() if v})


def settings() -> Settings:
    return Settings.from_env()


def control() -> Control:
    """The control service, called with this session's own token (see :mod:`fedops_dash.auth`)."""
    return Control(settings().control, auth.token())


def url(kind: str, ident: str, **extra: Any) -> str:
    """A relative link to the page of a run, task, client or model (``run?run=ID``); relative so it
    works under any base URL path."""
    page_name, query = LINKS[kind]
    return f"{page_name}?" + urllib.parse.urlencode({k: v for k, v in {query: ident, **extra}.items() if v != ""})


def link(kind: str, ident: str, label: str = "", **extra: Any) -> str:
    """A markdown link to an id's page (``""`` for an empty id)."""
    return f"[{label or ident}]({url(kind, ident, **extra)})" if ident else ""


def logs_url(run_id: str = "", client_id: str = "", round_number: int | None = None) -> str:
    """The Logs page filtered to a run, a client and/or a round."""
    query = {"run": run_id, "client": client_id, "round": "" if round_number is None else str(round_number)}
    return "logs?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})


def link_column(label: str, kind: str) -> Any:
    """A table column of ``url(kind, id)`` cells that shows the bare id (``logs``: of logs_url cells)."""
    if kind == "logs":
        return st.column_config.LinkColumn(label, display_text="open logs")
    return st.column_config.LinkColumn(label, display_text=rf"[?&]{LINKS[kind][1]}=([^&]*)")


def newest_first(items: list[dict[str, Any]], key: str = "created_at") -> list[dict[str, Any]]:
    """Newest first by a JSON timestamp (RFC 3339 strings sort in time order)."""
    return sorted(items, key=lambda item: item.get(key, ""), reverse=True)


def paged(items: list[T], key: str, per_page: int = 20) -> list[T]:
    """One page of ``items`` with a page picker below the table, when there is more than a page."""
    pages = max(1, -(-len(items) // per_page))
    if pages == 1:
        return items
    number = st.number_input(f"Page (of {pages}, {per_page} per page)", 1, pages, 1, key=f"page-{key}")
    return items[(int(number) - 1) * per_page:int(number) * per_page]


def run_label(run: dict[str, Any], titles: dict[str, str] | None = None) -> str:
    """How a run reads in a picker: id, task title, status, start time."""
    title = (titles or {}).get(run.get("task_id", ""), run.get("task_id", ""))
    return (f"{run['id']} · {title} · {run_status(run.get('state', ''), run.get('outcome', ''))} · "
            f"{clock(run.get('started_at') or run.get('created_at', ''))}")


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


def pick(label: str, options: list[str], query_key: str, key: str | None = None,
         labels: dict[str, str] | None = None) -> str | None:
    """A selectbox whose default comes from the page URL (?run=..., ?task=...); ``labels`` say what
    each id is (title, state, time). The choice is written back to the URL, so it can be shared."""
    if not options:
        return None
    wanted = st.query_params.get(query_key)
    if wanted and wanted not in options:
        options = [wanted, *options]  # a deep link to something beyond the first page still opens
    index = options.index(wanted) if wanted in options else 0
    chosen = st.selectbox(label, options, index=index, key=key or f"pick-{query_key}",
                          format_func=lambda item: (labels or {}).get(item, item))
    if chosen and st.query_params.get(query_key) != chosen:
        st.query_params[query_key] = chosen
    return chosen


def pick_or_stop(label: str, items: list[dict[str, Any]], query_key: str, empty: str,
                 read: Callable[[str], T], key: str | None = None, labels: dict[str, str] | None = None) -> T:
    """Choose one item by id (default from the URL) and read it in full; stop the page with ``empty``
    when there is none, or after the error notice when it cannot be read."""
    chosen = pick(label, [item["id"] for item in items], query_key, key, labels)
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


def metrics_table(rows: list[dict[str, Any]], links: dict[str, str] | None = None) -> None:
    """A table; ``links`` maps a column to the kind of id its cells link to (their cells are
    ``url(kind, id)``, shown as the id)."""
    if rows:
        st.dataframe(rows, width="stretch", hide_index=True,
                     column_config={column: link_column(column, kind) for column, kind in (links or {}).items()})
    else:
        st.caption("nothing yet")
