"""Structured logging for every actor: structlog, JSON lines, Elastic Common Schema names.

Each actor calls :func:`configure_logging` once with its component name; correlation
ids (task, run, round, client, Flower node) are bound with :func:`bind_ids` or passed
as keyword arguments and land under ``labels.*``-style ECS fields.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from fedops_common.telemetry.writer import EVENT_IDS

# Our keyword names -> ECS field names. Anything else goes under ``labels``.
_ECS_FIELDS = {
    "task_id": "fedops.task.id",
    "run_id": "fedops.run.id",
    "round": "fedops.round",
    "client_id": "fedops.client.id",
    "node_id": "fedops.flower.node_id",
    "flower_run_id": "fedops.flower.run_id",
    "model_id": "fedops.model.id",
    "error": "error.message",
    "pid": "process.pid",
}


def _label(key: str) -> str:
    """ECS label keys hold no dots: ``labels.a.b`` would clash with the flat keyword ``labels.a``."""
    return key.replace(".", "_")


def _to_ecs(_: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Rename structlog's keys to ECS: @timestamp, log.level, message, service.name."""
    out: dict[str, Any] = {
        "@timestamp": event.pop("timestamp", None),
        "log.level": event.pop("level", method),
        "message": event.pop("event", ""),
        "ecs.version": "8.11.0",
        "event.id": EVENT_IDS.next(),  # the shipper's _id: replays of this line never duplicate
    }
    component = event.pop("component", None)
    if component:
        out["service.name"] = component
    logger_name = event.pop("logger", None)
    if logger_name:
        out["log.logger"] = logger_name
    for key, value in event.items():
        if key in _ECS_FIELDS:
            out[_ECS_FIELDS[key]] = value
        elif key == "exception":
            out["error.stack_trace"] = value
        elif isinstance(value, dict):  # labels are flat keywords in every index mapping
            out[f"labels.{_label(key)}"] = json.dumps(value, default=str, sort_keys=True)
        else:
            out[f"labels.{_label(key)}"] = value
    return out


# Libraries that log every HTTP request at INFO: their lines would feed the log shipper's own backlog.
QUIET_LOGGERS = ("elastic_transport", "elasticsearch", "urllib3")


def configure_logging(component: str, log_file: Path | None = None, level: str = "INFO",
                      stream: TextIO | None = sys.stderr) -> None:
    """Send this process's logs as ECS JSON lines to ``log_file`` and/or ``stream``.

    Records of other libraries that use the standard ``logging`` module are rendered the same way.
    """
    def add_component(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        # Not a context variable: threads that do not inherit the context (Streamlit's script
        # runner, library threads) must name the component too.
        event.setdefault("component", component)
        return event

    shared: list[Any] = [
        add_component,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, _to_ecs, structlog.processors.JSONRenderer()])
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    if stream is not None:
        handlers.append(logging.StreamHandler(stream))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=False,
    )


def bind_ids(**ids: Any) -> None:
    """Bind correlation ids (task_id, run_id, round, client_id, node_id) to this context."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v not in (None, "")})


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger."""
    return structlog.get_logger(name)
