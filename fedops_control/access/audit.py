"""The audit log: every state-changing call, who made it, from where, and its outcome.

Records go to the telemetry family ``audit`` (shipped to the ``fedops-audit`` alias like every
other log) and, as a one-line summary, to the service's own log.

On the event loop, records are written in batches: each record is stamped when the call ends and
appended to the file with the others of the same turn of the loop, one write and one flush for all
(at the end of that turn, after the calls' answers were handed to gRPC). In a registration storm a
write and flush per record took about 5 % of the service's core (py-spy, 5,000 agents; every
``Register`` is audited). A record can therefore be lost only if the process dies within that turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from fedops_common.logging import get_logger
from fedops_common.telemetry import TelemetryWriter
from fedops_common.telemetry.documents import now_iso
from fedops_control.access.policy import role_name
from fedops_control.access.tokens import Identity

log = get_logger(__name__)
SECRET_FIELDS = ("enrolment_tokens", "token", "credential")
MAX_REQUEST_BYTES = 16 * 1024
ID_FIELDS = {"task_id": "fedops.task.id", "run_id": "fedops.run.id", "client_id": "fedops.client.id",
             "token_id": "fedops.audit.token_id"}
LOG_KEYS = {document_key: field for field, document_key in ID_FIELDS.items()}


def _ids(message: Message | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if message is None:
        return out
    for field, key in ID_FIELDS.items():
        if field in message.DESCRIPTOR.fields_by_name and getattr(message, field):
            out[key] = str(getattr(message, field))
    return out


def _request_summary(request: Message | None) -> dict[str, Any]:
    if request is None:
        return {}
    if request.ByteSize() > MAX_REQUEST_BYTES:
        return {"omitted_bytes": request.ByteSize()}
    body = json_format.MessageToDict(request, preserving_proto_field_name=True)
    for field in SECRET_FIELDS:
        if field in body:
            body[field] = "[redacted]"
    return body


class AuditLog:
    """Writes one audit record per state-changing call."""

    def __init__(self, writer: TelemetryWriter | None) -> None:
        self._writer = writer
        self._pending: list[dict[str, Any]] = []  # records of this turn of the event loop

    def flush(self) -> None:
        """Write the pending records (one write, one flush)."""
        pending, self._pending = self._pending, []
        if pending and self._writer is not None:
            self._writer.write_many("audit", pending)

    def record(self, method: str, identity: Identity | None, peer: str, request: Message | None,
               response: Message | None, code: grpc.StatusCode, details: str = "") -> None:
        """Write the record of one call (``response`` is None when it failed)."""
        action = method.rsplit("/", 1)[-1]
        outcome = "success" if code == grpc.StatusCode.OK else "failure"
        who = identity.name if identity else ("enrolling device" if action == "Register" else "unauthenticated")
        role = role_name(identity.role) if identity else ""
        ids = {**_ids(request), **_ids(response)}
        created = str(getattr(response, "id", "")) if action in ("CreateTask", "StartRun") else ""
        if created:
            ids["fedops.task.id" if action == "CreateTask" else "fedops.run.id"] = created
        document = {
            "@timestamp": now_iso(),
            "message": f"{who} ({role or 'no role'}) {action}: {code.name}" + (f" - {details}" if details else ""),
            "log.level": "info" if outcome == "success" else "warning",
            "event.kind": "event", "event.category": ["iam" if "Token" in action else "configuration"],
            "event.action": action, "event.outcome": outcome,
            "user.id": identity.token_id if identity else "", "user.name": who, "user.roles": [role] if role else [],
            "source.address": peer, "fedops.audit.status": code.name, "fedops.audit.method": method,
            "fedops.audit.request": _request_summary(request), **ids,
        }
        if self._writer is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the event loop: at once
                self._writer.write("audit", document)
            else:
                if not self._pending:
                    loop.call_soon(self.flush)
                self._pending.append(document)
        # The log line takes the logger's keyword names (task_id, ...), which it maps to the ECS fields.
        log.info("audit", action=action, outcome=outcome, user=who, role=role, status=code.name,
                 **{LOG_KEYS[k]: v for k, v in ids.items()})
