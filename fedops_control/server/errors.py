"""Map domain errors to gRPC status codes in one place."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc

from fedops_common.logging import get_logger
from fedops_control.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
)

DOMAIN_ERRORS = (InvalidArgument, NotFound, FailedPrecondition, PermissionDenied, Unauthenticated, Overloaded)

log = get_logger(__name__)


def _code_of(err: Exception) -> tuple[grpc.StatusCode, str] | None:
    if isinstance(err, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(err)
    if isinstance(err, FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(err)
    if isinstance(err, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, str(err)
    if isinstance(err, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED, str(err)
    if isinstance(err, Overloaded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(err)
    return None


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for unary async handlers: domain errors become status codes, others INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except DOMAIN_ERRORS as err:
            code, text = _code_of(err)  # type: ignore[misc]  # grpc ships no type information (see pyproject)
            await context.abort(code, text)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            log.exception("unhandled error in RPC", rpc=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}")

    return wrapper


def grpc_stream_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """The same for server-streaming handlers (async generators)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in method(self, request, context):
                yield item
        except DOMAIN_ERRORS as err:
            code, text = _code_of(err)  # type: ignore[misc]  # grpc ships no type information (see pyproject)
            await context.abort(code, text)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            log.exception("unhandled error in stream", rpc=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}")

    return wrapper
