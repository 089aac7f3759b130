"""Times every unary RPC of the control service (``fedops_control_rpc_duration_seconds{method}``).

Streams (agent sessions, WatchRun) live for minutes and are not timed. The method label is the
method's short name: a fixed set, so the series stay bounded.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from fedops_control import metrics


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Observes how long each unary call took, authentication included (it runs first)."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        started = time.perf_counter()
        handler = await continuation(details)
        if handler is None or not handler.unary_unary:
            return handler
        behavior, method = handler.unary_unary, details.method.rsplit("/", 1)[-1]

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            finally:
                metrics.rpc_answered(method, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
