"""Structured logging for every actor: structlog, JSON lines, Elastic Common Schema names.

Each actor calls :func:`configure_logging` once with its component name; correlation
ids (task, run, round, client, Flower node) are bound with :func:`bind_ids` or passed
as keyword arguments and land under ``labels.*``-style ECS fields.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

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


def _to_ecs(_: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Rename structlog's keys to ECS: @timestamp, log.level, message, service.name."""
    out: dict[str, Any] = {
        "@timestamp": event.pop("timestamp", None),
        "log.level": event.pop("level", method),
        "message": event.pop("event", ""),
        "ecs.version": "8.11.0",
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
        else:
            out[f"labels.{key}"] = value
    return out


def configure_logging(component: str, log_file: Path | None = None, level: str = "INFO",
                      stream: TextIO | None = sys.stderr) -> None:
    """Send this process's logs as ECS JSON lines to ``log_file`` and/or ``stream``."""
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
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _to_ecs,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(component=component)


def bind_ids(**ids: Any) -> None:
    """Bind correlation ids (task_id, run_id, round, client_id, node_id) to this context."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v not in (None, "")})


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger."""
    return structlog.get_logger(name)
