"""Property-based fuzzing (hypothesis) of every RPC of a real control service.

Requests are built from the proto descriptors: every field gets malformed, oversized and hostile
values (huge and control-character strings, extreme numbers, NaN/inf, unknown enum values, deep
structs). Each answer must be OK or a deliberate refusal, never an internal error; the service
stays healthy and a task created beforehand is unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedops_common.grpc_channel import MAX_MESSAGE_BYTES, control_channel
from fedops_common.proto import (
    access_pb2,
    access_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
)
from fedops_control.devstack import LocalStack
from tests.conftest import DIGITS_APP, control_stack

pytestmark = pytest.mark.e2e
EXAMPLES_PER_RPC = 40
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.OUT_OF_RANGE}
CASES: dict[str, int] = {"count": 0}  # and one count per answer status

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)), max_size=80),
    st.sampled_from(["", " ", "../../etc/passwd", "${run.id}", "${", "}", "'; DROP TABLE tasks; --", "\x00",
                     "a" * 5000, "é" * 3000, "${" * 200, "task-" + "0" * 60, "best", "latest", "file:///", "-1"]),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=False), hostile_text)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(hostile_text, inner, max_size=4)),
                          max_leaves=12)


def field_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Struct":
            return st.dictionaries(hostile_text, json_value, max_size=5)
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return st.builds(lambda s: {"seconds": s}, st.integers(-62135596800, 253402300799))
        if field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return st.dictionaries(hostile_text, field_strategy(value, depth + 1), max_size=4)
        return message_strategy(field.message_type, depth + 1)
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return hostile_text
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 1000))
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.integers(-2**31, 2**31 - 1)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.integers(-2**63, 2**63 - 1)


def message_strategy(descriptor: Any, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    if depth > 3:
        return st.just({})
    fields = {}
    for field in descriptor.fields:
        strategy = field_strategy(field, depth)
        if field.is_repeated and not (
                field.message_type is not None and field.message_type.GetOptions().map_entry):
            strategy = st.lists(strategy, max_size=4)
        fields[field.name] = strategy
    return st.fixed_dictionaries({}, optional=fields)


def build(message_class: Any, values: dict[str, Any]) -> Any:
    """Fill a message from generated values; values protobuf itself cannot hold are skipped."""
    message = message_class()
    for name, value in values.items():
        single = message_class()
        try:
            json_format.ParseDict({name: _jsonable(value)}, single, ignore_unknown_fields=False)
        except (json_format.ParseError, ValueError, TypeError, OverflowError):
            continue
        message.MergeFrom(single)
    return message


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # Auth off: every request reaches validation. Refusals by role are fuzzed in test_access.py.
    with control_stack(tmp_path_factory.mktemp("fuzz"), auth=False) as stack:
        task = stack.ctl_json("task", "create", "--title", "kept intact", "--app", str(DIGITS_APP), "--rounds", "2")
        channel = control_channel(stack.control_address, stack.security())
        yield {"stack": stack, "task": task, "channel": channel}
        channel.close()


def rpcs() -> list[tuple[str, Any, Any, Any, bool]]:
    """(name, stub class, request class, method name, server-streaming) of every RPC we serve."""
    found = []
    for module, grpc_module in ((control_pb2, control_pb2_grpc), (agent_pb2, agent_pb2_grpc),
                                (access_pb2, access_pb2_grpc)):
        for service_desc in module.DESCRIPTOR.services_by_name.values():
            stub_class = getattr(grpc_module, f"{service_desc.name}Stub")
            for method in service_desc.methods:
                if method.client_streaming:
                    continue  # Session / UploadModel: fuzzed through their first message below
                request_class = _message_class(method.input_type)
                found.append((f"{service_desc.name}.{method.name}", stub_class, request_class, method.name,
                              method.server_streaming))
    return found


def _message_class(descriptor: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def assert_refused_or_ok(call: Any) -> None:
    CASES["count"] += 1
    try:
        call()
        status = "OK"
    except grpc.RpcError as err:
        code = err.code()
        assert code in REFUSALS, f"{code.name}: {err.details()}"
        status = code.name
    CASES[status] = CASES.get(status, 0) + 1


@pytest.mark.parametrize("rpc", rpcs(), ids=lambda r: r[0])
def test_rpc_survives_hostile_requests(service: dict[str, Any], rpc: tuple[str, Any, Any, Any, bool]) -> None:
    name, stub_class, request_class, method, streaming = rpc
    stub = stub_class(service["channel"])

    @settings(max_examples=EXAMPLES_PER_RPC, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(message_strategy(request_class.DESCRIPTOR))
    def check(values: dict[str, Any]) -> None:
        request = build(request_class, values)
        if streaming:
            assert_refused_or_ok(lambda: list(getattr(stub, method)(request, timeout=3)))
        else:
            assert_refused_or_ok(lambda: getattr(stub, method)(request, timeout=10))

    try:
        check()
    except grpc.RpcError as err:  # a streaming call on a live run may run past its deadline
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_agent_session_with_hostile_first_messages(service: dict[str, Any]) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(service["channel"])

    @settings(max_examples=EXAMPLES_PER_RPC, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(message_strategy(agent_pb2.AgentMessage.DESCRIPTOR))
    def check(values: dict[str, Any]) -> None:
        message = build(agent_pb2.AgentMessage, values)

        def call() -> None:
            try:
                for _ in stub.Session(iter([message]), timeout=2):
                    pass
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise

        assert_refused_or_ok(call)

    check()


def test_oversized_messages_are_refused(service: dict[str, Any]) -> None:
    stub = control_pb2_grpc.ControlServiceStub(service["channel"])
    huge = control_pb2.CreateTaskRequest()
    huge.task.title = "x" * (MAX_MESSAGE_BYTES + 1024)
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateTask(huge, timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    long_title = control_pb2.CreateTaskRequest()
    long_title.task.CopyFrom(json_format.ParseDict(
        {"title": "t" * 100_000, "app": {"local_path": str(DIGITS_APP)}}, long_title.task))
    with pytest.raises(grpc.RpcError) as too_long:
        stub.CreateTask(long_title, timeout=10)
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "title" in too_long.value.details()
    CASES["count"] += 2


def test_service_healthy_and_state_intact_after_fuzzing(service: dict[str, Any]) -> None:
    stack: LocalStack = service["stack"]
    assert stack.ctl("health").returncode == 0
    kept = stack.ctl_json("task", "show", service["task"]["id"])
    assert kept["title"] == "kept intact" and kept["strategy"]["rounds"] == 2
    assert CASES["count"] >= EXAMPLES_PER_RPC * 10
    # The fuzzer reaches validation, lookups and successful calls alike, not just one kind of answer.
    assert min(CASES.get(k, 0) for k in ("OK", "INVALID_ARGUMENT", "NOT_FOUND")) > 0, CASES
    report = Path(__file__).resolve().parents[1] / ".cache" / "fuzz-cases.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps(CASES))
    print(f"\nfuzzed {CASES['count']} hostile requests")
