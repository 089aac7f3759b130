"""Append telemetry documents as JSON lines: the local default and the shipper's spool."""

from __future__ import annotations

import itertools
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from fedops_common.telemetry.documents import FAMILIES, now_iso

ENV_TELEMETRY_DIR = "FEDOPS_TELEMETRY_DIR"


def telemetry_dir_from_env() -> Path | None:
    """The telemetry directory a parent actor handed down (Flower's app processes inherit it)."""
    value = os.environ.get(ENV_TELEMETRY_DIR, "")
    return Path(value) if value else None


class EventIds:
    """Process-unique, deterministic document ids: ``<instance>-<sequence>``.

    The id is written into the document itself, so a replay of the same line after an
    outage carries the same id and Elasticsearch's ``create`` refuses the duplicate. A forked
    child (a warm app's task is a fork of its template) starts a new instance: with the parent's,
    every task's first line would carry the same id and Elasticsearch would keep only one of them.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.instance = uuid.uuid4().hex[:16]
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        """The next id."""
        with self._lock:
            return f"{self.instance}-{next(self._seq):010d}"


EVENT_IDS = EventIds()


class TelemetryWriter:
    """Writes documents of each family to ``<root>/<family>/<stream>.jsonl``.

    ``base`` fields (service name, client id, ...) are added to every document.
    """

    def __init__(self, root: Path, stream: str, base: dict[str, Any] | None = None) -> None:
        self.root = root
        self.stream = stream
        self.base = dict(base or {})
        self._lock = threading.Lock()
        self._files: dict[str, Any] = {}

    def path(self, family: str) -> Path:
        """The file a family's documents go to."""
        return self.root / family / f"{self.stream}.jsonl"

    def write(self, family: str, document: dict[str, Any]) -> dict[str, Any]:
        """Append one document (adds ``@timestamp``, ``event.id`` and the base fields); returns it."""
        return self.write_many(family, [document])[0]

    def write_many(self, family: str, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append documents in one write and one flush (what :meth:`write` does for each); returns them.
        For callers that produce many documents at once: a flush is a system call each."""
        if family not in FAMILIES:
            raise ValueError(f"unknown telemetry family {family!r}")
        stamp = now_iso()
        docs = []
        for document in documents:
            doc = {"@timestamp": stamp, **self.base, **document}
            doc.setdefault("event.id", EVENT_IDS.next())
            docs.append(doc)
        text = "".join(json.dumps(doc, separators=(",", ":"), default=str) + "\n" for doc in docs)
        with self._lock:
            handle = self._files.get(family)
            if handle is None:
                self.path(family).parent.mkdir(parents=True, exist_ok=True)
                handle = self._files[family] = open(self.path(family), "a", encoding="utf-8")
            handle.write(text)
            handle.flush()
        return docs

    def close(self) -> None:
        """Close every open file."""
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()
