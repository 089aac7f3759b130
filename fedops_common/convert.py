"""Conversions between protobuf helper types and plain Python values."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """Struct -> dict (numbers stay floats, as protobuf keeps them)."""
    return json_format.MessageToDict(message)


def dict_to_struct(values: dict[str, Any] | None) -> struct_pb2.Struct:
    """dict -> Struct."""
    out = struct_pb2.Struct()
    if values:
        out.update(values)
    return out


def to_timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """Naive datetimes are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def utcnow() -> dt.datetime:
    """Naive UTC now, as stored in the database."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def short_name(enum_name: str) -> str:
    """``RUN_STATE_RUNNING`` -> ``running`` (``""`` stays ``""``)."""
    return enum_name.split("_", 2)[-1].lower() if enum_name else ""


def enum_label(enum: Any, value: int) -> str:
    """The short lower-case name of a proto enum value, e.g. ``running``."""
    return short_name(enum.Name(value))
