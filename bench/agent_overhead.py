"""Agent telemetry overhead at 1 Hz sampling, in % of one core.

Runs the agent's ResourceSampler (psutil, Prometheus gauges, a JSON-lines document per
sample) in this process for --seconds and measures the process CPU time it used, against
the same process idling for the same time.

Usage: python bench/agent_overhead.py [--seconds 60] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedops_agent.resources import ResourceSampler  # noqa: E402 - imported once sys.path holds the app
from fedops_common.telemetry import TelemetryWriter  # noqa: E402 - imported once sys.path holds the app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedops-agent-bench-"))
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(args.seconds)
    idle = time.process_time() - c0
    writer = TelemetryWriter(work, "bench", {"service.name": "fedops-agent"})
    sampler = ResourceSampler(writer, work, args.interval)
    sampler.client_id = "client-bench"
    c0, t0 = time.process_time(), time.monotonic()
    sampler.start()
    time.sleep(args.seconds)
    sampler.stop()
    busy, wall = time.process_time() - c0, time.monotonic() - t0
    samples = sum(1 for _ in (work / "resources" / "bench.jsonl").open())
    print(json.dumps({"seconds": round(wall, 1), "interval_s": args.interval, "samples": samples,
                      "cpu_s_sampling": round(busy, 4), "cpu_s_idle": round(idle, 4),
                      "overhead_pct_of_one_core": round(100 * (busy - idle) / wall, 3),
                      "cpu_ms_per_sample": round(1000 * (busy - idle) / max(samples, 1), 3)}, indent=2))


if __name__ == "__main__":
    main()
