"""The audit log's records (fedops_control/access/audit.py) in a real telemetry file: stamped when the
call ends, written together at the end of the event loop's turn, secrets redacted; at once off the loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc

from fedops_common.proto import access_pb2, agent_pb2, common_pb2
from fedops_common.telemetry import TelemetryWriter
from fedops_control.access.audit import AuditLog
from fedops_control.access.tokens import Identity

ADMIN = Identity(token_id="t1", kind=access_pb2.TOKEN_KIND_API, role=access_pb2.ROLE_ADMIN, name="alice")
REGISTER = "/fedops.v1.AgentService/Register"


def records(writer: TelemetryWriter) -> list[dict[str, Any]]:
    path = writer.path("audit")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def register_request(device: str) -> agent_pb2.RegisterRequest:
    return agent_pb2.RegisterRequest(device=common_pb2.DeviceInfo(device_id=device), enrolment_tokens=["foe_secret"])


def test_records_of_one_turn_of_the_loop_are_written_together_in_order(tmp_path: Path) -> None:
    writer = TelemetryWriter(tmp_path, "fedops-control")
    audit = AuditLog(writer)

    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        for i in range(3):
            audit.record(REGISTER, None, f"ipv4:10.0.0.{i}:5000", register_request(f"d{i}"),
                         agent_pb2.RegisterResponse(client_id=f"client-{i}"), grpc.StatusCode.OK)
        audit.record("/fedops.v1.AccessService/CreateApiToken", ADMIN, "ipv4:10.0.0.9:5000", None, None,
                     grpc.StatusCode.PERMISSION_DENIED, "no")
        during = len(records(writer))  # nothing yet: the turn has not ended
        await asyncio.sleep(0)
        return during, records(writer)

    during, written = asyncio.run(scenario())
    assert during == 0
    assert [r["fedops.client.id"] for r in written[:3]] == ["client-0", "client-1", "client-2"]
    assert [r["event.outcome"] for r in written] == ["success"] * 3 + ["failure"]
    assert written[0]["user.name"] == "enrolling device" and written[3]["user.name"] == "alice"
    assert all(r["fedops.audit.request"].get("enrolment_tokens") == "[redacted]" for r in written[:3])
    assert "foe_secret" not in writer.path("audit").read_text()
    stamps = [r["@timestamp"] for r in written]
    assert stamps == sorted(stamps) and len(set(r["event.id"] for r in written)) == 4
    writer.close()


def test_a_record_made_off_the_event_loop_is_written_at_once(tmp_path: Path) -> None:
    writer = TelemetryWriter(tmp_path, "fedops-control")
    AuditLog(writer).record(REGISTER, None, "", register_request("d1"), None, grpc.StatusCode.UNAUTHENTICATED, "x")
    [written] = records(writer)
    assert written["fedops.audit.status"] == "UNAUTHENTICATED" and written["message"].endswith("UNAUTHENTICATED - x")
    writer.close()
