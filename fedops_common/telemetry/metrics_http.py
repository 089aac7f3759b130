"""One small HTTP server per actor: Prometheus ``/metrics`` plus optional JSON routes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

JsonRoute = Callable[[], Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True


def serve_metrics(listen: str, routes: dict[str, JsonRoute] | None = None) -> tuple[WSGIServer, str]:
    """Serve ``/metrics`` (and ``routes``, path -> function returning JSON) on ``host:port`` in a
    daemon thread. Port 0 picks a free port. Returns the server and the bound ``host:port``."""
    metrics_app = make_wsgi_app()
    json_routes = dict(routes or {})

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        handler = json_routes.get(environ.get("PATH_INFO", ""))
        if handler is None:
            return metrics_app(environ, start_response)
        body = json.dumps(handler()).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    host, _, port = listen.rpartition(":")
    server = make_server(host or "127.0.0.1", int(port), app, server_class=_ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="fedops-metrics", daemon=True).start()
    return server, f"{host or '127.0.0.1'}:{server.server_port}"
