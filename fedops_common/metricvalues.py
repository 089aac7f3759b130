"""Numeric metrics as Flower replies carry them, and as FedOps stores and sends them.

A Flower reply carries metrics in MetricRecords (values: int, float, or lists of them) and,
from apps written against the older API, in the ConfigRecord that Flower's compat layer
makes of the app's metrics dict (``fitres.metrics``, ``evaluateres.metrics``). FedOps keeps
both kinds, scalars and lists, as a plain ``dict[str, float | list[float]]`` (JSON in the
database) and sends them as the typed ``Metrics`` message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedops_common.proto import common_pb2

Value = float | list[float]
# ConfigRecords that Flower's compat layer fills from an older-style app's metrics dict.
_LEGACY_METRICS_SUFFIX = ".metrics"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def coerce(value: Any) -> Value | None:
    """A scalar or a list of numbers as FedOps keeps it; None for anything else (strings, bytes)."""
    number = _number(value)
    if number is not None:
        return number
    if isinstance(value, (list, tuple)) and value:
        numbers = [_number(v) for v in value]
        if all(n is not None for n in numbers):
            return [n for n in numbers if n is not None]
    return None


def from_mapping(values: Mapping[str, Any] | None) -> dict[str, Value]:
    """The numeric entries (scalars and lists) of a MetricRecord, ConfigRecord or dict."""
    out: dict[str, Value] = {}
    for key, value in (values or {}).items():
        coerced = coerce(value)
        if coerced is not None:
            out[str(key)] = coerced
    return out


def from_records(records: Any) -> dict[str, Value]:
    """Every metric of a Flower RecordDict: all MetricRecords, and the legacy metrics ConfigRecords."""
    out: dict[str, Value] = {}
    for record in records.metric_records.values():
        out.update(from_mapping(record))
    for name, record in records.config_records.items():
        if name.endswith(_LEGACY_METRICS_SUFFIX):
            out.update(from_mapping(record))
    return out


def to_proto(values: Mapping[str, Value] | None) -> common_pb2.Metrics:
    """The typed wire form."""
    message = common_pb2.Metrics()
    for key, value in (values or {}).items():
        if isinstance(value, list):
            message.lists[key].values.extend(value)
        else:
            message.scalars[key] = float(value)
    return message


def from_proto(message: common_pb2.Metrics) -> dict[str, Value]:
    """Inverse of :func:`to_proto`."""
    out: dict[str, Value] = {key: float(value) for key, value in message.scalars.items()}
    out.update({key: list(value.values) for key, value in message.lists.items()})
    return out


def scalars(values: Mapping[str, Any] | None) -> dict[str, float]:
    """Only the scalar entries (what Prometheus and the scalar map fields carry)."""
    return {key: float(value) for key, value in (values or {}).items() if _number(value) is not None}


def lists(values: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """Only the list entries."""
    return {key: [float(v) for v in value] for key, value in (values or {}).items() if isinstance(value, list)}


def fill(scalar_map: Any, list_map: Any, values: Mapping[str, Any] | None) -> None:
    """Fill a proto's ``map<string, double>`` and ``map<string, MetricList>`` pair from stored values."""
    scalar_map.update(scalars(values))
    for key, items in lists(values).items():
        list_map[key].values.extend(items)


def merged(scalar_map: Mapping[str, float], list_map: Mapping[str, Any]) -> dict[str, Value]:
    """One dict from a proto's ``map<string, double>`` and ``map<string, MetricList>`` pair."""
    return {**{k: float(v) for k, v in scalar_map.items()}, **{k: list(v.values) for k, v in list_map.items()}}


def text(values: Mapping[str, Any] | None, keys: Iterable[str] = ()) -> str:
    """``k=v`` pairs for one line of text; lists as ``[a, b, …]`` (at most 4 items shown)."""
    wanted = set(keys)
    parts = []
    for key, value in sorted((values or {}).items()):
        if wanted and key not in wanted:
            continue
        if isinstance(value, list):
            shown = ", ".join(f"{v:.3g}" for v in value[:4]) + (", …" if len(value) > 4 else "")
            parts.append(f"{key}=[{shown}]")
        else:
            parts.append(f"{key}={value:.4g}")
    return ", ".join(parts)
