"""Helpers every page uses: backends from the environment, notices when one is absent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from fedops_dash.backends import BackendError, Control, Settings

T = TypeVar("T")


def settings() -> Settings:
    return Settings.from_env()


def control() -> Control:
    return Control(settings().control)


def attempt(what: str, action: Callable[[], T], default: T) -> T:
    """Run a backend call; on failure show a clear notice and go on with ``default``."""
    try:
        return action()
    except BackendError as err:
        st.error(f"{what} failed: {err}")
        return default


def short(enum_name: str) -> str:
    """``RUN_STATE_RUNNING`` -> ``running``."""
    return enum_name.split("_", 2)[-1].lower() if enum_name else ""


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


def metrics_table(rows: list[dict[str, Any]]) -> None:
    if rows:
        st.dataframe(rows, use_container_width=True, hide_index=True)
    else:
        st.caption("nothing yet")
