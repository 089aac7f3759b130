"""A SELECT of the rows whose key is one of a set of values, built once."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, bindparam


class KeyedSelect:
    """``select ... where <key> IN (:keys)``, and ``= :key`` when there is one key.

    Both forms are built once (SQLAlchemy reuses their compiled forms). The expanding ``IN`` is
    rendered again at every execution: 40-50 µs of CPU (cProfile, SQLite), which a set of one key
    — a registration alone, the common case on an idle service — need not pay. No keys, no query.
    """

    def __init__(self, query: Select[Any], key: ColumnElement[Any]) -> None:
        self._one = query.where(key == bindparam("_key"))
        self._many = query.where(key.in_(bindparam("_keys", expanding=True)))

    def __call__(self, conn: Connection, keys: Collection[Any], **params: Any) -> Sequence[Any]:
        """The rows whose key is in ``keys``; ``params``: the query's other bind parameters."""
        if not keys:
            return []
        if len(keys) == 1:
            return conn.execute(self._one, {"_key": next(iter(keys)), **params}).all()
        return conn.execute(self._many, {"_keys": sorted(keys), **params}).all()
