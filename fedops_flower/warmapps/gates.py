"""The SuperLink's middlewares for one API only, skipped by the requests of its other APIs.

Flower's SuperLink (1.42) serves its Fleet, Control and Runtime APIs from one FastAPI app whose
every request passes eight middlewares (``flwr/superlink/main.py``, ``_get_middleware``), each a
Starlette ``BaseHTTPMiddleware``: per layer a task group, memory streams and a wrapped request,
whether the layer does anything or not. Six of them act on one API only and hand every other
request straight on (``return await call_next(request)``, their first line): four on Control paths
(``/v1/control/``: no-cache headers, account authentication, the license check, the event log),
two on Fleet paths (``/v1/fleet/``: SuperNode authentication, the event log); the two event logs
act only when Flower's event log is on (``FLWR_ENABLE_EVENT_LOG=1``, a plugin in the app's state). The requests of a
round are Fleet (SuperNodes) and Runtime (the ServerApp) requests, so most of the layers they
crossed only passed them on, and that is CPU of the SuperLink, the process every hop of a round
goes through (about half a core during a run; ``bench/README.md``, issue 16).

:func:`install` puts each of those six behind :class:`PathGate`, a plain ASGI wrapper that sends
requests under the layer's path prefix through the layer (an event log: only when its plugin is
there) and all others around it. A request that reaches the layer meets the very same middleware;
one that does not skips a layer that would only have called the next. Measured on the app alone
(``GET /health``, which crosses every layer, 3,000 calls in one process): 926 µs of CPU per request
with Flower's list, 238 µs gated. The two layers every request needs (error translation, protobuf translation) and
any extension's middlewares are left as they are. Nothing is gated when Flower's list differs from
the one this was written for (an upgrade), nor for a request with a ``root_path``.
"""

from __future__ import annotations

from typing import Any

INSTALLED_MARK = "fedops: the SuperLink's Control and Fleet middlewares skip the other APIs' requests"
CONTROL_PREFIX = "/v1/control/"
FLEET_PREFIX = "/v1/fleet/"
# Flower's middleware class -> the only paths it acts on, and the attribute of the app's state
# without which it acts on none (its plugin), read from each class's dispatch (Flower 1.42).
GATED: dict[str, tuple[str, str | None]] = {
    "ControlSensitiveResponseMiddleware": (CONTROL_PREFIX, None),
    "ControlAuthenticationMiddleware": (CONTROL_PREFIX, None),
    "ControlLicenseMiddleware": (CONTROL_PREFIX, None),
    "ControlEventLogMiddleware": (CONTROL_PREFIX, "control_event_log_plugin"),
    "NodeAuthMiddleware": (FLEET_PREFIX, None),
    "FleetEventLogMiddleware": (FLEET_PREFIX, "fleet_event_log_plugin"),
}


class PathGate:
    """ASGI: HTTP requests under ``prefix`` (and anything else but plain HTTP) go through the
    middleware ``layer(app, *args, **kwargs)``, unless the app's state has no ``plugin`` (when one
    is named); other HTTP requests go to ``app`` directly."""

    def __init__(self, app: Any, layer: type, args: tuple[Any, ...], kwargs: dict[str, Any], prefix: str,
                 plugin: str | None = None) -> None:
        self.app = app
        self.gated = layer(app, *args, **kwargs)
        self.prefix = prefix
        self.plugin = plugin

    def _skips(self, scope: dict[str, Any]) -> bool:
        if scope["type"] != "http" or scope.get("root_path"):
            return False
        if not scope["path"].startswith(self.prefix):
            return True
        if self.plugin is None:
            return False
        state = getattr(scope.get("app"), "state", None)
        return state is not None and getattr(state, self.plugin, True) is None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await (self.app if self._skips(scope) else self.gated)(scope, receive, send)


def gate(middleware: list[Any]) -> list[Any]:
    """``middleware`` (Starlette ``Middleware`` entries) with the one-API layers behind a gate."""
    from starlette.middleware import Middleware

    gated = []
    for entry in middleware:
        gate_of = GATED.get(getattr(entry.cls, "__name__", ""))
        if gate_of is None:
            gated.append(entry)
        else:
            prefix, plugin = gate_of
            gated.append(Middleware(PathGate, layer=entry.cls, args=tuple(entry.args), kwargs=dict(entry.kwargs),
                                    prefix=prefix, plugin=plugin))
    return gated


def install() -> bool:
    """Gate this process's SuperLink middlewares (call before ``flower_superlink()``). False,
    changing nothing, when Flower's list is not the one of ``GATED`` plus the two shared layers."""
    try:
        from flwr.superlink import main as module
    except ImportError:
        return False
    build = getattr(module, "_get_middleware", None)
    if not callable(build):
        return False
    names = [getattr(entry.cls, "__name__", "") for entry in build()]
    if not set(GATED) <= set(names):
        return False

    def gated_middleware() -> list[Any]:
        return gate(build())

    # create_app() calls it through the module when the app is built: the one seam there is.
    module._get_middleware = gated_middleware
    return True
