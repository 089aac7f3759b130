"""Telemetry of one actor process: logs, documents, optional shipping, in three lines.

    telemetry = start_telemetry("fedops-agent", state_dir / "telemetry", elasticsearch_url=url)
    telemetry.writer.write("resources", {...})
    telemetry.close()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedops_common.logging import configure_logging
from fedops_common.telemetry.shipper import Shipper, elasticsearch_client
from fedops_common.telemetry.writer import (
    ENV_TELEMETRY_DIR,
    TelemetryWriter,
    telemetry_dir_from_env,
)

ENV_ELASTICSEARCH_URL = "FEDOPS_ELASTICSEARCH_URL"


@dataclass
class Telemetry:
    """The writer every document goes through, and the shipper when Elasticsearch is configured."""

    root: Path
    writer: TelemetryWriter
    shipper: Shipper | None = None

    def close(self, flush: bool = True) -> None:
        """Stop shipping (after a last pass when ``flush``) and close the files."""
        if self.shipper is not None:
            self.shipper.stop(flush=flush)
        self.writer.close()


def start_telemetry(component: str, root: Path, elasticsearch_url: str = "", log_level: str = "INFO",
                    base: dict[str, Any] | None = None, stream_name: str | None = None,
                    inherit: bool = True) -> Telemetry:
    """Log to ``<root>/logs/<stream>.jsonl``, write documents under ``root`` and, with an
    Elasticsearch URL, ship all of it in a background thread. With ``inherit`` the child
    processes (Flower's apps) get ``root`` through the environment and log there too."""
    stream = stream_name or component
    root.mkdir(parents=True, exist_ok=True)
    configure_logging(component, root / "logs" / f"{stream}.jsonl", log_level, stream=None)
    if inherit:
        os.environ[ENV_TELEMETRY_DIR] = str(root)
    writer = TelemetryWriter(root, stream, {"service.name": component, **(base or {})})
    shipper = None
    if elasticsearch_url:
        shipper = Shipper(elasticsearch_client(elasticsearch_url), root).start()
    return Telemetry(root=root, writer=writer, shipper=shipper)


def app_process_telemetry(component: str) -> Telemetry | None:
    """For Flower's app processes: log into the telemetry dir their actor handed down (or None).
    They do not ship; the actor that owns the directory does."""
    root = telemetry_dir_from_env()
    if root is None:
        configure_logging(component)
        return None
    return start_telemetry(component, root, stream_name=f"{component}-{os.getpid()}", inherit=False)
