"""Document families, their indices and aliases.

Each family lands in daily indices ``fedops-<family>-YYYY.MM.DD`` behind the alias
``fedops-<family>`` (added by the family's composable index template).
"""

from __future__ import annotations

import datetime as dt
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
    """The repository's ``observability/`` folder (index templates, Kibana objects): named by
    ``FEDOPS_OBSERVABILITY_DIR``, else beside the source tree, else in the working directory (images)."""
    named = os.environ.get("FEDOPS_OBSERVABILITY_DIR", "")
    candidates = [Path(named)] if named else []
    candidates += [Path(__file__).resolve().parents[2] / "observability", Path.cwd() / "observability"]
    return next((c for c in candidates if c.is_dir()), candidates[0])
