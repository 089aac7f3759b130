"""Resource sampler of a device agent: psutil (and NVML when present) at a fixed rate.

Every sample sets the agent's Prometheus gauges and is written as a ``resources`` telemetry
document tagged with the run, round and global model version being trained, so usage can
be followed per model version.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import Gauge

from fedops_common.telemetry import TelemetryWriter

LABELS = ["client_id", "run_id", "model_version"]
CPU = Gauge("fedops_agent_cpu_usage_ratio", "Host CPU busy fraction (0-1)", LABELS)
MEMORY = Gauge("fedops_agent_memory_used_bytes", "Host memory in use", LABELS)
MEMORY_RATIO = Gauge("fedops_agent_memory_usage_ratio", "Host memory in use (0-1)", LABELS)
DISK_RATIO = Gauge("fedops_agent_disk_usage_ratio", "Disk holding the agent's state, in use (0-1)", LABELS)
NET_SENT = Gauge("fedops_agent_network_sent_bytes", "Host network bytes sent since boot", LABELS)
NET_RECV = Gauge("fedops_agent_network_received_bytes", "Host network bytes received since boot", LABELS)
RSS = Gauge("fedops_agent_process_resident_memory_bytes",
            "RSS of the agent and everything it started (SuperNode, ClientApps)", LABELS)
GPU_UTIL = Gauge("fedops_agent_gpu_utilization_ratio", "GPU busy fraction (0-1)", [*LABELS, "gpu"])
GPU_MEMORY = Gauge("fedops_agent_gpu_memory_used_bytes", "GPU memory in use", [*LABELS, "gpu"])
ALL_GAUGES = (CPU, MEMORY, MEMORY_RATIO, DISK_RATIO, NET_SENT, NET_RECV, RSS)


@dataclass
class TrainingTags:
    """What the device is working on; tags every sample."""

    run_id: str = ""
    round: int = 0
    model_version: int = 0
    model_id: str = ""


def _nvml() -> Any:
    """pynvml (nvidia-ml-py) initialised, or None when no NVIDIA GPU/driver/package is present."""
    try:
        import pynvml  # type: ignore[import-not-found]  # optional: only on NVIDIA hosts, no stubs

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no package, no driver or no GPU: sample without GPU fields
        return None


class ResourceSampler:
    """Samples at ``interval_s`` in a daemon thread."""

    def __init__(self, writer: TelemetryWriter, disk_path: Path, interval_s: float = 1.0) -> None:
        self.writer = writer
        self.disk_path = disk_path
        self.interval_s = interval_s
        self.client_id = ""
        self.tags = TrainingTags()
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._nvml = _nvml()
        self._last_labels: tuple[str, str, str] | None = None
        self._thread: threading.Thread | None = None
        self._cpu_procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)

    def retag(self, tags: TrainingTags) -> None:
        """Tag samples from now on with another run/round/model version."""
        self.tags = tags

    def _tree_cpu(self) -> float:
        """CPU of the agent and everything it started (SuperNode, ClientApps) since the last sample, as a
        fraction of the host's cores: the host figure alone cannot tell FL work from the rest of the host.
        Each process is kept between samples (psutil measures from one call to the next)."""
        procs = {p.pid: p for p in [self._process, *self._process.children(recursive=True)]}
        total = 0.0
        for pid, proc in procs.items():
            known = self._cpu_procs.setdefault(pid, proc)
            try:
                total += known.cpu_percent(None)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self._cpu_procs = {pid: p for pid, p in self._cpu_procs.items() if pid in procs}
        return total / 100.0 / (psutil.cpu_count() or 1)

    def _tree_rss(self) -> int:
        rss = 0
        for proc in [self._process, *self._process.children(recursive=True)]:
            try:
                rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return rss

    def _gpus(self) -> list[dict[str, Any]]:
        if self._nvml is None:
            return []
        gpus = []
        for index in range(self._nvml.nvmlDeviceGetCount()):
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append({"index": index, "usage": util.gpu / 100.0, "memory_used_bytes": int(memory.used),
                         "memory_total_bytes": int(memory.total)})
        return gpus

    def sample(self) -> dict[str, Any]:
        """Take one sample: update the gauges and write the document; returns it."""
        tags = self.tags
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(self.disk_path))
        net = psutil.net_io_counters()
        doc: dict[str, Any] = {
            "host.cpu.usage": psutil.cpu_percent(None) / 100.0,
            "system.memory.used.bytes": int(memory.total - memory.available),
            "system.memory.used.pct": memory.percent / 100.0,
            "system.filesystem.used.pct": disk.percent / 100.0,
            "host.network.egress.bytes": int(net.bytes_sent),
            "host.network.ingress.bytes": int(net.bytes_recv),
            "process.memory.rss": self._tree_rss(),
            "process.cpu.pct": self._tree_cpu(),
            "fedops.client.id": self.client_id,
            "fedops.run.id": tags.run_id,
            "fedops.round": tags.round,
            "fedops.model.version": tags.model_version,
            "fedops.model.id": tags.model_id,
        }
        gpus = self._gpus()
        if gpus:
            doc["gpu"] = gpus
        labels = (self.client_id, tags.run_id, str(tags.model_version))
        if self._last_labels is not None and self._last_labels != labels:
            for gauge in ALL_GAUGES:  # keep one series per client: the version it trains now
                try:
                    gauge.remove(*self._last_labels)
                except KeyError:
                    pass
        self._last_labels = labels
        CPU.labels(*labels).set(doc["host.cpu.usage"])
        MEMORY.labels(*labels).set(doc["system.memory.used.bytes"])
        MEMORY_RATIO.labels(*labels).set(doc["system.memory.used.pct"])
        DISK_RATIO.labels(*labels).set(doc["system.filesystem.used.pct"])
        NET_SENT.labels(*labels).set(doc["host.network.egress.bytes"])
        NET_RECV.labels(*labels).set(doc["host.network.ingress.bytes"])
        RSS.labels(*labels).set(doc["process.memory.rss"])
        for gpu in gpus:
            GPU_UTIL.labels(*labels, str(gpu["index"])).set(gpu["usage"])
            GPU_MEMORY.labels(*labels, str(gpu["index"])).set(gpu["memory_used_bytes"])
        return self.writer.write("resources", doc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a failed sample must not stop sampling
                continue

    def start(self) -> ResourceSampler:
        """Sample in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="fedops-resources", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
