"""Flower's in-memory request steps on the event loop (``warmapps/inline.py``), on Flower's own
SuperLink app: its answers must not change, and only the steps named in ``INLINE`` leave the
thread pool."""

from __future__ import annotations

import asyncio
import importlib
import warnings
from base64 import b64encode
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

with warnings.catch_warnings():  # Starlette's test client asks for httpx2; httpx is what Flower pins
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from fedops_flower.warmapps import inline
from fedops_flower.warmapps.superlink import state_in_memory

PROTOBUF = {"content-type": "application/protobuf"}


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The qualified names of the steps that reach the thread pool (the callers' ``run_in_threadpool``
    restored after the test, also when ``inline.install`` replaced it)."""
    seen: list[str] = []
    for name in inline.CALLERS:
        module = importlib.import_module(name)
        original = module.run_in_threadpool

        def recording(func: Callable[..., Any], *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            named = func if hasattr(func, "__qualname__") else type(func)
            seen.append(named.__qualname__)
            return _original(func, *args, **kwargs)

        monkeypatch.setattr(module, "run_in_threadpool", recording)
    return seen


def answers(key: ec.EllipticCurvePrivateKey) -> list[tuple[int, bytes]]:
    """What a new SuperLink app answers to a signed Fleet pull from a registered SuperNode, the same
    unsigned, a Runtime call without a task token, a malformed body and a health check."""
    from flwr.common.constant import TIMESTAMP_HEADER
    from flwr.proto.fleet_pb2 import PullMessagesRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER
    from flwr.supercore.date import now
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message
    from flwr.superlink.main import create_app

    app = create_app()
    public = public_key_to_bytes(key.public_key())
    node_id = app.state.linkstate_factory.state().create_node("account", "owner", public, 30.0)
    pull = PullMessagesRequest(node=Node(node_id=node_id)).SerializeToString()
    with TestClient(app) as client:
        stamp = now().isoformat()
        signed = {**PROTOBUF, FLEET_HTTP_PUBLIC_KEY_HEADER: b64encode(public).decode(), TIMESTAMP_HEADER: stamp,
                  FLEET_HTTP_SIGNATURE_HEADER: b64encode(sign_message(key, stamp.encode())).decode()}
        got = [client.post("/v1/fleet/pull-messages", content=pull, headers=signed),
               client.post("/v1/fleet/pull-messages", content=pull, headers=PROTOBUF),
               client.post("/v1/runtime/pull-task-input", content=b"", headers=PROTOBUF),
               client.post("/v1/fleet/pull-messages", content=b"\xff\xff", headers=signed),
               client.get("/health")]
    return [(answer.status_code, answer.content) for answer in got]


def test_flowers_superlink_answers_the_same_with_its_steps_inline(pooled: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    plain = answers(key)
    assert plain[0][0] == 200 and plain[1][0] == 401  # a registered node is served, an unsigned call refused
    assert {"VersionDependency", "get_protobuf_request", "get_linkstate", "authenticate_node",
            "fleet_pull_messages"} <= set(pooled)
    pooled.clear()
    assert inline.install()
    assert answers(key) == plain
    assert not any(inline.runs_inline(name) for name in pooled)
    leaked = {name for name in pooled for module, names in inline.INLINE.items() if name in names}
    assert not leaked, leaked


def test_only_the_named_steps_run_inline() -> None:
    from flwr.supercore.dependencies.version import VersionDependency

    # (the package's own ``router`` attribute is the APIRouter, not the module)
    control = importlib.import_module("flwr.superlink.routers.control.router")
    for module_name, names in inline.INLINE.items():
        module = importlib.import_module(module_name)
        for name in names:  # each still exists in Flower (an upgrade that renames one fails here)
            assert inline.runs_inline(getattr(module, name)), (module_name, name)
    assert inline.runs_inline(VersionDependency(component_name="SuperLink", connection_name="test"))
    assert not inline.runs_inline(control.list_runs)  # the Control API keeps its threads
    assert not inline.runs_inline(print)


def test_other_steps_still_go_to_the_pool() -> None:
    sent: list[Callable[..., Any]] = []

    async def pool(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        sent.append(func)
        return func(*args, **kwargs)

    run = inline.run_inline_known(pool)
    from flwr.superlink.dependencies.linkstate import get_linkstate

    factory = SimpleNamespace(state=lambda: "the state")
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(linkstate_factory=factory)))
    assert asyncio.run(run(get_linkstate, request)) == "the state" and sent == []
    assert asyncio.run(run(sorted, [2, 1])) == [1, 2] and sent == [sorted]


def test_install_changes_nothing_when_a_caller_is_gone() -> None:
    import fastapi.dependencies.utils as utils

    before = utils.run_in_threadpool
    assert inline.install(("fastapi.dependencies.utils", "fedops_no_such_module")) is False
    assert utils.run_in_threadpool is before


@pytest.mark.parametrize(("args", "expected"), [
    ([], True), (["--database", ":flwr-in-memory:"], True), (["--database=:flwr-in-memory:"], True),
    (["--insecure", "--database", "/tmp/state.db"], False), (["--database=/tmp/state.db"], False),
])
def test_a_superlink_with_a_state_file_keeps_its_threads(args: list[str], expected: bool) -> None:
    assert state_in_memory(args) is expected
