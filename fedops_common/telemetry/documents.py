"""Document families, their indices and aliases.

Each family lands in daily indices ``fedops-<family>-YYYY.MM.DD`` behind the alias
``fedops-<family>`` (added by the family's composable index template).
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import os
from pathlib import Path

FAMILIES = ("logs", "data-status", "resources", "round-metrics", "run-events", "audit")
INDEX_PREFIX = "fedops-"


def alias_for(family: str) -> str:
    """The alias every index of a family is reachable under."""
    return f"{INDEX_PREFIX}{family}"


def index_for(family: str, timestamp: str | None) -> str:
    """The daily index of a document with an ISO-8601 ``@timestamp`` (today when missing)."""
    day = timestamp[:10] if timestamp and len(timestamp) >= 10 else dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return f"{INDEX_PREFIX}{family}-{day.replace('-', '.')}"


def now_iso() -> str:
    """UTC now as ISO-8601 with a Z suffix, the form every document's ``@timestamp`` takes."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def observability_dir() -> Path:
    """Where the Elasticsearch index templates and Kibana saved objects are: shipped inside this
    package (``telemetry/assets/elk``, so an installed wheel finds them), unless
    ``FEDOPS_OBSERVABILITY_DIR`` names another folder with the same layout. The repository's
    ``observability/elk`` is a link to the packaged copy."""
    named = os.environ.get("FEDOPS_OBSERVABILITY_DIR", "")
    if named and Path(named).is_dir():
        return Path(named)
    return Path(str(importlib.resources.files("fedops_common.telemetry") / "assets"))
