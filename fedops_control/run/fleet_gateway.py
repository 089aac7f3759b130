"""The only door to a run's SuperLink: its Fleet API, and nothing else.

Flower (1.41, 1.42) serves the Fleet, Control and Runtime APIs on one HTTP port, so whoever can reach a
SuperLink's Fleet API could also start or stop runs and register nodes through its Control API.
This gateway runs the SuperLink as its child, bound to loopback, and serves agents on the run's
public address, forwarding ``POST /v1/fleet/*`` only. The Control and Runtime APIs stay on
loopback, for the control service and the run's ServerApp. The SuperLink is the gateway's child,
in the gateway's process group: stopping the group stops both, and the gateway exits with the
SuperLink's exit status, so a dead SuperLink is seen as the gateway's exit.

    python -m fedops_control.run.fleet_gateway --host 0.0.0.0 --port 9092 --upstream-port 39011 \\
        [--ssl-certfile C --ssl-keyfile K --ca-file CA] -- flower-superlink --host 127.0.0.1 --port 39011 ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedops_common.net import wait_for_port

if TYPE_CHECKING:
    from starlette.applications import Starlette

# httpx, uvicorn and starlette are imported after the SuperLink is started: their import time
# then overlaps its start-up instead of delaying it (StartRun -> first round is on this path).

FLEET_PREFIX = "/v1/fleet/"
UPSTREAM_HOST = "127.0.0.1"
# Per-connection headers are the gateway's own business; the rest (Flower's node-auth signature,
# content type) pass through unchanged. httpx returns bodies decoded, so their encoding goes too.
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailers", "transfer-encoding", "upgrade", "host", "content-length",
                         "content-encoding"})


def _forwarded(items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (name, value) pairs of ``items`` that are not hop-by-hop (repeated names kept)."""
    return [(k, v) for k, v in items if k.lower() not in HOP_HEADERS]


def create_app(upstream: str, ca_file: Path | None = None) -> Starlette:
    """An ASGI app forwarding ``POST /v1/fleet/*`` to ``upstream`` (``https://`` verified with ``ca_file``)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    # No read timeout: the SuperNode sets its own deadlines, and the gateway must not cut them short.
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(30.0, read=None))

    async def forward(request: Request) -> Response:
        if request.method != "POST" or not request.url.path.startswith(FLEET_PREFIX):
            return PlainTextResponse("only the Fleet API is served here\n", status_code=404)
        try:
            answer = await client.post(request.url.path, content=await request.body(),
                                       headers=_forwarded(request.headers.items()),
                                       params=request.url.query)
        except httpx.TransportError as err:  # the SuperLink is starting or gone: the SuperNode retries
            return PlainTextResponse(f"SuperLink unavailable: {err}\n", status_code=503)
        return Response(answer.content, status_code=answer.status_code,
                        headers=dict(_forwarded(answer.headers.multi_items())))

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


async def serve(args: argparse.Namespace, superlink: subprocess.Popen[bytes]) -> int:
    """Serve until the SuperLink exits (its status is returned) or this process is told to stop."""
    import uvicorn

    scheme = "https" if args.ssl_certfile else "http"
    app = create_app(f"{scheme}://{UPSTREAM_HOST}:{args.upstream_port}", args.ca_file)
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
        log_level="warning", access_log=False, lifespan="on"))

    async def watch_superlink() -> None:
        while superlink.poll() is None:
            await asyncio.sleep(0.5)
        server.should_exit = True

    watcher = asyncio.create_task(watch_superlink())
    await server.serve()  # uvicorn handles SIGTERM/SIGINT: a graceful stop
    watcher.cancel()
    if superlink.poll() is None:
        superlink.send_signal(signal.SIGTERM)
        try:
            superlink.wait(10)
        except subprocess.TimeoutExpired:
            superlink.kill()
    return superlink.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Start the SuperLink command given after ``--``, wait for it, then serve its Fleet API."""
    parser = argparse.ArgumentParser(prog="fleet_gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="address agents reach the Fleet API on")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True, help="the SuperLink's port on loopback")
    parser.add_argument("--ssl-certfile")
    parser.add_argument("--ssl-keyfile")
    parser.add_argument("--ca-file", type=Path, help="CA that signed the SuperLink's certificate")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("superlink", nargs=argparse.REMAINDER, help="-- the SuperLink command line")
    args = parser.parse_args(argv)
    command = args.superlink[1:] if args.superlink[:1] == ["--"] else args.superlink
    if not command:
        parser.error("the SuperLink command line is missing after --")
    superlink = subprocess.Popen(command)  # same process group: stopped with the gateway's group
    deadline = time.monotonic() + args.start_timeout
    while True:
        if superlink.poll() is not None:
            print(f"fleet gateway: the SuperLink exited with {superlink.returncode} while starting", file=sys.stderr)
            return superlink.returncode or 1
        try:
            wait_for_port(UPSTREAM_HOST, args.upstream_port, 0.5)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                print(f"fleet gateway: the SuperLink did not listen within {args.start_timeout:.0f}s",
                      file=sys.stderr)
                superlink.kill()
                return 1
    return asyncio.run(serve(args, superlink))


if __name__ == "__main__":
    sys.exit(main())
