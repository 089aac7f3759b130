"""Shipper throughput: documents per second from one process into a real Elasticsearch.

Writes N log documents (the same shape actors write) to a spool directory, then times one
`Shipper.ship_once()` pass over them: read, bulk `create` with deterministic ids, checkpoint.
Also times the replay of the same documents (all refused as duplicates).

Usage: python bench/shipper_throughput.py --elasticsearch-url http://127.0.0.1:9200 [--docs 200000]
       python bench/shipper_throughput.py --start-elasticsearch   # starts the test harness's own
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedops_common.telemetry import TelemetryWriter  # noqa: E402 - imported once sys.path holds the app
from fedops_common.telemetry.shipper import Shipper, elasticsearch_client  # noqa: E402 - imported once sys.path holds the app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--elasticsearch-url", default="")
    parser.add_argument("--start-elasticsearch", action="store_true")
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    server = None
    url = args.elasticsearch_url
    if args.start_elasticsearch:
        from tests.backends import Elasticsearch

        server = Elasticsearch(Path(tempfile.mkdtemp(prefix="fedops-es-"))).start()
        url = server.url
    work = Path(tempfile.mkdtemp(prefix="fedops-ship-bench-"))
    try:
        writer = TelemetryWriter(work, "bench", {"service.name": "bench", "fedops.client.id": "client-bench"})
        t0 = time.perf_counter()
        for i in range(args.docs):
            writer.write("logs", {"message": f"round {i % 10} train finished", "log.level": "info",
                                  "fedops.run.id": "run-bench", "fedops.round": i % 10, "labels.step": str(i)})
        writer.close()
        write_s = time.perf_counter() - t0
        client = elasticsearch_client(url)
        shipper = Shipper(client, work, batch_docs=args.batch)
        shipper.ship_once()  # templates applied, nothing else: the first pass ships everything below
        shutil.rmtree(work / ".shipper")
        client.indices.delete(index="fedops-logs-*", expand_wildcards="all")
        shipper = Shipper(client, work, batch_docs=args.batch)
        t0 = time.perf_counter()
        stats = shipper.ship_once()
        ship_s = time.perf_counter() - t0
        shutil.rmtree(work / ".shipper")
        t0 = time.perf_counter()
        replay = Shipper(client, work, batch_docs=args.batch).ship_once()
        replay_s = time.perf_counter() - t0
        print(json.dumps({"docs": args.docs, "batch": args.batch, "write_docs_per_s": round(args.docs / write_s),
                          "ship_docs_per_s": round(stats.created / ship_s), "created": stats.created,
                          "replay_docs_per_s": round(replay.already_there / replay_s),
                          "replay_duplicates_refused": replay.already_there}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)


if __name__ == "__main__":
    main()
