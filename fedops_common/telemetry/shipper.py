"""Ship spooled JSON-lines telemetry to Elasticsearch with the official bulk helpers.

The files written by :class:`~fedops_common.telemetry.writer.TelemetryWriter` (and the
log files) are the spool: they are append-only, so nothing is lost while Elasticsearch is
down. The shipper reads each file from its checkpoint in bounded batches, bulk-``create``s
them with each document's ``event.id`` as ``_id`` and moves the checkpoint only after the
batch is acknowledged. A replay after an outage or a crash re-sends the same ids, and
Elasticsearch answers 409 for those already stored: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import Elasticsearch, helpers
from prometheus_client import Counter, Gauge

from fedops_common.logging import get_logger
from fedops_common.telemetry.documents import FAMILIES, index_for

log = get_logger(__name__)
SHIPPED = Counter("fedops_shipper_documents", "Telemetry documents handled by the Elasticsearch shipper",
                  ["family", "outcome"])
BACKLOG = Gauge("fedops_shipper_backlog_bytes", "Spooled telemetry bytes not yet in Elasticsearch")
STATE_DIR = ".shipper"
UNAVAILABLE = (TransportConnectionError, ConnectionTimeout)
FINAL_PASSES = 5


@dataclass
class ShipStats:
    """What one pass shipped."""

    created: int = 0
    already_there: int = 0
    rejected: int = 0


def elasticsearch_client(url: str, timeout_s: float = 30.0) -> Elasticsearch:
    """A client for ``url`` with transport-level retries."""
    return Elasticsearch(url, request_timeout=timeout_s, retry_on_timeout=True, max_retries=2)


class Shipper:
    """Tails every ``<root>/<family>/*.jsonl`` file into Elasticsearch."""

    def __init__(self, client: Elasticsearch, root: Path, batch_docs: int = 5000,
                 batch_bytes: int = 8 * 1024 * 1024) -> None:
        self.client = client
        self.root = root
        self.batch_docs = batch_docs
        self.batch_bytes = batch_bytes
        self.state = root / STATE_DIR
        self.templates_applied = False
        self._stop = threading.Event()
        self._pass_lock = threading.Lock()  # one pass at a time: checkpoints move forward only
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- checkpoints
    def _checkpoint(self, path: Path) -> Path:
        return self.state / path.relative_to(self.root).with_suffix(".offset")

    def offset(self, path: Path) -> int:
        """Bytes of ``path`` already shipped."""
        try:
            return int(self._checkpoint(path).read_text(encoding="ascii"))
        except (OSError, ValueError):
            return 0

    def _save_offset(self, path: Path, offset: int) -> None:
        target = self._checkpoint(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{threading.get_ident()}.tmp")
        tmp.write_text(str(offset), encoding="ascii")
        tmp.replace(target)  # atomic: a crash leaves the old or the new offset, never half

    def files(self) -> list[tuple[str, Path]]:
        """(family, file) of every spool file, in a stable order."""
        return [(family, path) for family in FAMILIES for path in sorted((self.root / family).glob("*.jsonl"))]

    def backlog_bytes(self) -> int:
        """Bytes written but not shipped yet."""
        total = 0
        for _, path in self.files():
            try:
                total += max(path.stat().st_size - self.offset(path), 0)
            except OSError:
                continue
        return total

    # -------------------------------------------------------------- shipping
    def _read_batch(self, handle: Any, end: int) -> tuple[list[bytes], int]:
        """Up to batch_docs complete lines between the handle's position and ``end``; returns them and
        the bytes read. Stopping at ``end`` bounds a pass even while the file keeps growing."""
        lines: list[bytes] = []
        size = 0
        while len(lines) < self.batch_docs and size < self.batch_bytes and handle.tell() < end:
            start = handle.tell()
            line = handle.readline()
            if not line.endswith(b"\n"):  # a line still being written: next pass
                handle.seek(start)
                break
            size += len(line)
            if line.strip():
                lines.append(line)
        return lines, size

    def _actions(self, family: str, path: Path, offset: int, lines: list[bytes]) -> list[dict[str, Any]]:
        actions = []
        position = offset
        for line in lines:
            try:
                doc = json.loads(line)
                doc_id = str(doc.get("event.id") or doc.get("event", {}).get("id") or "")
                timestamp = doc.get("@timestamp")
            except ValueError:
                doc, doc_id, timestamp = None, "", None
            if not doc_id:  # lines without an id get one from their place in the file
                doc_id = hashlib.sha1(f"{path}:{position}".encode()).hexdigest()[:24]
            if doc is None:
                source = json.dumps({"message": line.decode(errors="replace"), "event.id": doc_id,
                                     "fedops.parse_error": True})
            else:
                source = line.decode(errors="replace")
            actions.append({"_op_type": "create", "_index": index_for(family, timestamp), "_id": doc_id,
                            "_source": source})
            position += len(line)
        return actions

    def _bulk(self, family: str, actions: list[dict[str, Any]], stats: ShipStats) -> None:
        rejected = []
        for ok, item in helpers.streaming_bulk(
                self.client, actions, chunk_size=self.batch_docs, max_chunk_bytes=self.batch_bytes + 1024 * 1024,
                raise_on_error=False, raise_on_exception=True, max_retries=5, initial_backoff=0.5, max_backoff=10):
            result = item.get("create", {})
            status = int(result.get("status", 0))
            if ok:
                stats.created += 1
            elif status == 409:  # stored by an earlier attempt: the replay is a no-op
                stats.already_there += 1
            else:
                rejected.append({"_id": result.get("_id"), "_index": result.get("_index"), "status": status,
                                 "error": result.get("error")})
        created = len(actions) - len(rejected)
        if rejected:  # kept with the reason, not dropped silently
            stats.rejected += len(rejected)
            dead = self.state / "rejected.jsonl"
            dead.parent.mkdir(parents=True, exist_ok=True)
            with dead.open("a", encoding="utf-8") as handle:
                for entry in rejected:
                    handle.write(json.dumps(entry, default=str) + "\n")
            log.warning("documents rejected by Elasticsearch", count=len(rejected), family=family)
            SHIPPED.labels(family, "rejected").inc(len(rejected))
        SHIPPED.labels(family, "stored").inc(created)

    def ship_file(self, family: str, path: Path, stats: ShipStats) -> None:
        """Ship what ``path`` has beyond its checkpoint."""
        offset = self.offset(path)
        with path.open("rb") as handle:
            end = handle.seek(0, 2)
            handle.seek(offset)
            while True:
                lines, size = self._read_batch(handle, end)
                if size == 0:
                    return
                if lines:
                    self._bulk(family, self._actions(family, path, offset, lines), stats)
                offset += size
                self._save_offset(path, offset)

    def ship_once(self) -> ShipStats:
        """Ship every file's backlog; raises a transport error when Elasticsearch is unreachable."""
        with self._pass_lock:
            return self._ship_pass()

    def _ship_pass(self) -> ShipStats:
        stats = ShipStats()
        if not self.templates_applied:  # mappings must exist before the first index is auto-created
            from fedops_common.telemetry.elastic import apply_templates

            apply_templates(self.client)
            self.templates_applied = True
        for family, path in self.files():
            self.ship_file(family, path, stats)
        BACKLOG.set(self.backlog_bytes())
        return stats

    # -------------------------------------------------------------- background thread
    def run(self, interval_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        """Ship until :meth:`stop`; while Elasticsearch is down, back off and keep spooling."""
        backoff = interval_s
        while not self._stop.is_set():
            try:
                self.ship_once()
                backoff = interval_s
            except UNAVAILABLE as err:
                BACKLOG.set(self.backlog_bytes())
                log.warning("Elasticsearch unreachable; telemetry stays spooled", error=str(err)[:200],
                            retry_in_s=backoff)
                backoff = min(backoff * 2, max_backoff_s)
            except Exception as err:  # never let the shipper thread die
                log.exception("shipper pass failed", error=str(err)[:200])
                backoff = min(backoff * 2, max_backoff_s)
            self._stop.wait(backoff)

    def start(self, interval_s: float = 1.0) -> Shipper:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, args=(interval_s,), name="fedops-shipper", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush: bool = True, timeout_s: float = 10.0) -> None:
        """Stop the thread; with ``flush``, try one last pass so short-lived processes leave nothing behind."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if flush:
            try:
                self._stop.clear()
                # A pass can itself log (e.g. the client noting Elasticsearch is back): ship those too.
                for _ in range(FINAL_PASSES):
                    self.ship_once()
                    if self.backlog_bytes() == 0:
                        break
            except Exception as err:  # stays spooled; the next shipper of this directory sends it
                log.warning("final telemetry flush failed; documents stay spooled", error=str(err)[:200])
            finally:
                self._stop.set()
