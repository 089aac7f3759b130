"""The observer relay: how a run's ServerApp reaches the control service when it runs in a pod.

On Kubernetes, Flower's own executor starts each ServerApp as a pod in the run's namespace, and
Flower 1.42's executor puts no Secret into such a pod (it refuses ``secret`` volumes, projected
Secret and service-account-token volumes and ``valueFrom`` environment entries, and sets
``automountServiceAccountToken: false``). So the ServerApp can hold no run token and no client
certificate. This relay holds them instead: it runs in the run's SuperLink pod, which FedOps
creates itself (its Secrets are mounted there), serves the run's ServerApps on a port reachable
within the run's namespace only, and forwards their ObserverService calls to the control service,
adding the run's token (and, under mutual TLS, presenting its client certificate). A ServerApp pod
then needs the relay's address and the CA that verifies it (public, in a ConfigMap) and nothing else.

- Only the ObserverService passes (every method the proto declares, unary and streaming alike,
  forwarded as raw bytes to the same method upstream); any other method gets ``UNIMPLEMENTED``
  from the relay itself and never reaches the control service.
- The caller's own ``authorization`` metadata is dropped and replaced by the run's token, which
  the control service accepts for that run's reports only: a call for another run is refused
  there (``PERMISSION_DENIED``), and the relay forwards that refusal as it forwards any status.
- Deadlines pass on; a caller that goes away cancels the upstream call.

It runs as its own container of the SuperLink pod (``python -m fedops_control.run.observer_relay``),
not inside the Fleet gateway's: the run's token and the relay's client certificate are then mounted
into this container alone (not into the gateway nor the SuperExec, which runs Flower's executor),
it gets its own CPU and memory limits, and a relay that dies is a container exit the launcher
already reports in plain words. (A separation of mounts only: the pod's ServiceAccount may read the
namespace's Secrets, as Flower's executor must; the ServerApp pods, which run the user's code, get
neither that account's token nor any Secret of ours.)

    python -m fedops_control.run.observer_relay --listen 0.0.0.0:9094 --upstream fedops-control.fedops.svc:50051 \\
        [--tls-cert C --tls-key K] [--upstream-ca CA [--upstream-cert C --upstream-key K]] [--token-file T]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from fedops_common.grpc_channel import CHANNEL_OPTIONS, SERVER_OPTIONS
from fedops_common.proc import until_stop_signal
from fedops_common.proto import agent_pb2
from fedops_common.security import AUTHORIZATION, read_secret

OBSERVER_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["ObserverService"]
# The full method names the relay forwards: "/fedops.v1.ObserverService/ReportServerEvent", ...
FORWARDED = frozenset(f"/{OBSERVER_SERVICE.full_name}/{method.name}" for method in OBSERVER_SERVICE.methods)
# Metadata that is the relay's own business (the caller's credential, HTTP/2 and gRPC headers).
_DROPPED = frozenset({AUTHORIZATION, "user-agent", "content-type", "te", "host"})

Behaviour = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]


def _passed_on(metadata: Sequence[tuple[str, Any]] | None, token: str) -> grpc.aio.Metadata:
    """The caller's metadata less what is the relay's own, with the run's token."""
    pairs = [(key, value) for key, value in metadata or ()
             if key.lower() not in _DROPPED and not key.startswith((":", "grpc-"))]
    if token:
        pairs.append((AUTHORIZATION, f"Bearer {token}"))
    return grpc.aio.Metadata(*pairs)


class ObserverRelay(grpc.GenericRpcHandler):
    """Forwards the ObserverService's calls to ``upstream`` (a channel to the control service)."""

    def __init__(self, upstream: grpc.aio.Channel, token: str = "") -> None:
        self._upstream = upstream
        self._token = token

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """A handler for the Observer service's methods; None (``UNIMPLEMENTED``) for any other."""
        method = handler_call_details.method
        if method not in FORWARDED:
            return None
        # Every method as a bidirectional stream of raw bytes: on the wire a unary call is a stream
        # of one message each way, so one handler forwards all four kinds unchanged.
        return grpc.stream_stream_rpc_method_handler(self._forward(method))

    def _forward(self, method: str) -> Behaviour:
        call_upstream = self._upstream.stream_stream(method)  # no (de)serializers: bytes in, bytes out

        async def forward(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            call = call_upstream(requests, timeout=context.time_remaining(),
                                 metadata=_passed_on(context.invocation_metadata(), self._token))
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as err:  # the control service's answer, passed on as it is
                context.set_code(err.code())
                context.set_details(err.details() or "")
            finally:
                if not call.done():  # the caller went away: so does the upstream call
                    call.cancel()

        return forward


def upstream_channel(address: str, ca: bytes = b"", cert: bytes = b"", key: bytes = b"") -> grpc.aio.Channel:
    """A channel to the control service: TLS verified with ``ca`` (plaintext without), presenting
    ``cert``/``key`` under mutual TLS."""
    if not ca:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(ca, key or None, cert or None)
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


async def serve(listen: str, upstream: grpc.aio.Channel, token: str = "",
                tls: tuple[bytes, bytes] | None = None, started: asyncio.Event | None = None) -> None:
    """Serve the relay on ``listen`` (TLS with ``tls`` = (certificate, key) PEMs) until cancelled
    or signalled (SIGTERM, SIGINT)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((ObserverRelay(upstream, token),))
    if tls is not None:
        server.add_secure_port(listen, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        server.add_insecure_port(listen)
    await server.start()
    print(f"observer relay: listening on {listen}, forwarding {OBSERVER_SERVICE.full_name}", flush=True)
    if started is not None:
        started.set()
    try:
        await until_stop_signal()
    finally:
        await server.stop(grace=5)
        await upstream.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="observer_relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port the run's ServerApps reach the relay on")
    parser.add_argument("--upstream", required=True, help="host:port of the control service")
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (the SuperLink's)")
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--upstream-ca", type=Path, help="verify the control service with this CA (TLS)")
    parser.add_argument("--upstream-cert", type=Path, help="client certificate for the control service (mTLS)")
    parser.add_argument("--upstream-key", type=Path)
    parser.add_argument("--token-file", type=Path, help="the run's token, added to every call")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if (args.upstream_cert is None) != (args.upstream_key is None):
        parser.error("--upstream-cert and --upstream-key go together")
    if args.upstream_cert is not None and args.upstream_ca is None:
        parser.error("--upstream-cert needs --upstream-ca")

    def read(path: Path | None) -> bytes:
        return path.read_bytes() if path is not None else b""

    tls = (read(args.tls_cert), read(args.tls_key)) if args.tls_cert is not None else None
    token = read_secret(args.token_file) if args.token_file is not None else ""

    async def run() -> None:  # the channel belongs to the event loop it is made in
        channel = upstream_channel(args.upstream, read(args.upstream_ca), read(args.upstream_cert),
                                   read(args.upstream_key))
        await serve(args.listen, channel, token, tls)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
