"""The Elasticsearch shipper against a real Elasticsearch: outage, replay, partial lines, rejections."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedops_common.telemetry import TelemetryWriter, alias_for
from fedops_common.telemetry.shipper import Shipper, elasticsearch_client
from tests.backends import Elasticsearch, wait_until

OUTAGE_S = 60


@pytest.fixture()
def own_elasticsearch() -> Iterator[Elasticsearch]:
    """An Elasticsearch of this test alone: it gets stopped and restarted."""
    root = Path(tempfile.mkdtemp(prefix="fedops-es-"))
    server = Elasticsearch(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def repeated_values(es: Elasticsearch, index: str, field: str, query: dict) -> list[str]:
    """Values of ``field`` that more than one document holds: exact, unlike a ``cardinality``
    aggregation (an estimate: it once counted 13,552 distinct values among 13,551 documents)."""
    answer = es.search(index, query, size=0,
                       aggs={"n": {"terms": {"field": field, "min_doc_count": 2, "size": 100}}})
    return [str(bucket["key"]) for bucket in answer["aggregations"]["n"]["buckets"]]


@pytest.mark.e2e
def test_no_document_lost_or_duplicated_across_a_60s_outage(tmp_path: Path, own_elasticsearch: Elasticsearch) -> None:
    es = own_elasticsearch
    writer = TelemetryWriter(tmp_path / "telemetry", "outage", {"service.name": "outage-test"})
    shipper = Shipper(elasticsearch_client(es.url, timeout_s=5), tmp_path / "telemetry").start(interval_s=0.5)
    written = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal written
        while not stop.is_set():
            writer.write("logs", {"message": f"document {written}", "labels.n": str(written), "log.level": "info"})
            written += 1
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    query = {"term": {"service.name": "outage-test"}}
    try:
        wait_until(lambda: es.count(alias_for("logs"), query) > 100, 60, "documents before the outage")
        es.stop()
        outage_started = time.monotonic()
        time.sleep(OUTAGE_S)
        assert shipper.backlog_bytes() > 0, "documents written during the outage must wait in the spool"
        written_during_outage = written
        es.start()
        assert time.monotonic() - outage_started >= OUTAGE_S
        time.sleep(3)
    finally:
        stop.set()
        producer.join()
    wait_until(lambda: shipper.backlog_bytes() == 0 and es.count(alias_for("logs"), query) == written, 180,
               f"all {written} documents in Elasticsearch after the outage")
    shipper.stop()
    assert written > written_during_outage > 1000
    assert es.count(alias_for("logs"), query) == written  # 0 lost
    assert repeated_values(es, alias_for("logs"), "labels.n", query) == []  # 0 duplicated
    # A crash that loses every checkpoint replays everything: Elasticsearch refuses each duplicate.
    shutil.rmtree(tmp_path / "telemetry" / ".shipper")
    replay = Shipper(elasticsearch_client(es.url), tmp_path / "telemetry").ship_once()
    assert (replay.created, replay.already_there) == (0, written)
    assert es.count(alias_for("logs"), query) == written


@pytest.mark.e2e
def test_partial_lines_wait_and_rejected_documents_are_kept(tmp_path: Path, elasticsearch: Elasticsearch) -> None:
    root = tmp_path / "telemetry"
    writer = TelemetryWriter(root, "edge", {"service.name": "edge-test"})
    writer.write("logs", {"message": "complete"})
    writer.write("round-metrics", {"message": "bad round", "fedops.round": "not-a-number"})
    writer.close()
    with (root / "logs" / "edge.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"message": "half-writ')  # a writer caught mid-line
    shipper = Shipper(elasticsearch_client(elasticsearch.url), root)
    stats = shipper.ship_once()
    assert (stats.created, stats.rejected) == (1, 1)
    rejected = [json.loads(line) for line in (root / ".shipper" / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["status"] == 400 and "fedops.round" in json.dumps(rejected[0]["error"])
    with (root / "logs" / "edge.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('ten", "event.id": "edge-2"}\n')
    assert shipper.ship_once().created == 1
    found = elasticsearch.search(alias_for("logs"), {"term": {"event.id": "edge-2"}})["hits"]["hits"]
    assert [h["_source"]["message"] for h in found] == ["half-written"]


def test_log_lines_with_dotted_and_nested_keywords_are_stored(tmp_path: Path, elasticsearch: Elasticsearch) -> None:
    """Whatever keyword names a caller logs with, the line fits the logs mapping (labels are flat keywords)."""
    import logging

    from fedops_common.logging import configure_logging, get_logger

    root = tmp_path / "telemetry"
    configure_logging("label-test", root / "logs" / "label-test.jsonl", stream=None)
    try:
        log = get_logger("label-test")
        log.info("first", **{"fedops.task.id": "task-1", "user": "admin"})  # labels.fedops would be an object
        log.info("second", fedops="a flat value", nested={"a": {"b": 1}}, task_id="task-2")
    finally:
        for handler in list(logging.getLogger().handlers):
            handler.close()
            logging.getLogger().removeHandler(handler)
    stats = Shipper(elasticsearch_client(elasticsearch.url), root).ship_once()
    assert (stats.created, stats.rejected) == (2, 0)
    lines = [json.loads(line) for line in (root / "logs" / "label-test.jsonl").read_text().splitlines()]
    assert lines[0]["labels.fedops_task_id"] == "task-1" and lines[1]["fedops.task.id"] == "task-2"
    assert json.loads(lines[1]["labels.nested"]) == {"a": {"b": 1}}
