"""The SuperLink's one-API middlewares skipped by the other APIs' requests (``warmapps/gates.py``):
on a recording app, and on Flower's own SuperLink app, whose answers must not change."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

with warnings.catch_warnings():  # Starlette's test client asks for httpx2; httpx is what Flower pins
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from fedops_flower.warmapps import gates


def recording(name: str, seen: list[str]) -> type:
    """A pass-through middleware class called ``name`` that notes each request it handles."""

    async def dispatch(self: Any, request: Request, call_next: Any) -> Any:
        seen.append(f"{name} {request.url.path}")
        return await call_next(request)

    return type(name, (BaseHTTPMiddleware,), {"dispatch": dispatch})


def app_with(seen: list[str], plugin: object | None = None) -> Starlette:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok " + request.url.path)

    layers = [Middleware(recording(name, seen)) for name in ("NodeAuthMiddleware", "FleetEventLogMiddleware",
                                                            "ControlAuthenticationMiddleware", "SharedLayer")]
    app = Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST"])], middleware=gates.gate(layers))
    app.state.fleet_event_log_plugin = plugin
    return app


def test_each_layer_sees_only_its_apis_requests() -> None:
    seen: list[str] = []
    with TestClient(app_with(seen)) as client:
        for path in ("/v1/fleet/pull-messages", "/v1/control/list-runs", "/v1/runtime/pull-task-input"):
            answer = client.post(path)
            assert answer.status_code == 200 and answer.text == f"ok {path}"
    assert seen == [
        "NodeAuthMiddleware /v1/fleet/pull-messages", "SharedLayer /v1/fleet/pull-messages",  # no event-log plugin
        "ControlAuthenticationMiddleware /v1/control/list-runs", "SharedLayer /v1/control/list-runs",
        "SharedLayer /v1/runtime/pull-task-input",
    ]


def test_an_event_log_with_its_plugin_sees_its_apis_requests() -> None:
    seen: list[str] = []
    with TestClient(app_with(seen, plugin=object())) as client:
        client.post("/v1/fleet/push-messages")
        client.post("/v1/runtime/push-messages")
    assert "FleetEventLogMiddleware /v1/fleet/push-messages" in seen
    assert not any(entry.startswith("FleetEventLogMiddleware /v1/runtime") for entry in seen)


def test_a_request_with_a_root_path_meets_every_layer() -> None:
    seen: list[str] = []
    with TestClient(app_with(seen), root_path="/behind-a-proxy") as client:
        client.get("/behind-a-proxy/v1/runtime/x")
    assert {entry.split()[0] for entry in seen} == {"NodeAuthMiddleware", "FleetEventLogMiddleware",
                                                    "ControlAuthenticationMiddleware", "SharedLayer"}


@pytest.fixture
def flower_main(monkeypatch: pytest.MonkeyPatch) -> Any:
    from flwr.superlink import main

    monkeypatch.setattr(main, "_get_middleware", main._get_middleware)  # restored after the test
    return main


def answers(app: Any) -> list[tuple[int, str]]:
    """What Flower's app answers to a Fleet request without SuperNode signature, a Control request,
    a Runtime request without its token, a malformed body and a health check."""
    from flwr.proto.fleet_pb2 import PullMessagesRequest

    protobuf = {"content-type": "application/protobuf"}
    with TestClient(app) as client:
        got = [client.post("/v1/fleet/pull-messages", content=PullMessagesRequest().SerializeToString(),
                           headers=protobuf),
               client.post("/v1/control/list-runs", content=b"", headers=protobuf),
               client.post("/v1/runtime/pull-task-input", content=b"", headers=protobuf),
               client.post("/v1/fleet/pull-messages", content=b"\xff\xff", headers=protobuf),
               client.get("/health")]
    # The list-runs answer carries the current time; its status and type are what must match.
    return [(a.status_code, a.headers.get("content-type", "") if "control" in str(a.url) else a.text) for a in got]


def test_flowers_superlink_answers_the_same_gated(flower_main: Any) -> None:
    plain = answers(flower_main.create_app())
    assert gates.install()
    layers = [entry.kwargs["layer"].__name__ for entry in flower_main._get_middleware() if entry.cls is gates.PathGate]
    assert sorted(layers) == sorted(gates.GATED)
    gated = answers(flower_main.create_app())
    assert gated == plain
    assert gated[0][0] == 401  # the Fleet API still authenticates SuperNodes


def test_install_changes_nothing_when_flowers_list_differs(flower_main: Any) -> None:
    flower_main._get_middleware = lambda: []
    assert gates.install() is False
    assert flower_main._get_middleware() == []
