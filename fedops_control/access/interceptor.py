"""Authentication and authorization of every RPC, in one server interceptor.

The interceptor resolves the bearer token, checks the role the method needs (policy.py) and
writes the audit record of state-changing calls. Servicers that must know *which* agent or run
is calling (to stop one agent acting as another) ask :meth:`AccessControl.identity`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from fedops_common.proto import access_pb2
from fedops_common.security import AUTHORIZATION
from fedops_control.access.audit import AuditLog
from fedops_control.access.policy import AUDITED, ENROLMENT, OPEN, allows, required_role, role_name
from fedops_control.access.tokens import ANONYMOUS_ADMIN, Identity, TokenStore

A = access_pb2


def bearer(metadata: Sequence[Any] | None) -> str:
    """The token of an ``authorization: Bearer <token>`` header ('' when absent)."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""


class AccessControl:
    """Token checks shared by the interceptor and the servicers."""

    def __init__(self, tokens: TokenStore, enabled: bool = True) -> None:
        self.tokens = tokens
        self.enabled = enabled

    async def resolve(self, token: str) -> Identity | None:
        """The identity of a token; a token not seen before is looked up on a thread, off the event loop."""
        if not token:
            return None
        known, identity = self.tokens.cached(token)
        return identity if known else await asyncio.to_thread(self.tokens.resolve, token)

    def identity(self, context: grpc.aio.ServicerContext) -> Identity | None:
        """The caller's identity: ANONYMOUS_ADMIN without auth, None for no or an invalid token."""
        if not self.enabled:
            return ANONYMOUS_ADMIN
        token = bearer(context.invocation_metadata())
        return self.tokens.resolve(token) if token else None


def _denying(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that refuses the call."""

    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    async def deny_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, details)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the role their method needs; audits state-changing calls."""

    def __init__(self, access: AccessControl, audit: AuditLog) -> None:
        self._access = access
        self._audit = audit

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        needed = required_role(method)
        identity: Identity | None = ANONYMOUS_ADMIN
        if self._access.enabled and needed != OPEN:
            token = bearer(details.invocation_metadata)
            identity = await self._access.resolve(token)
            refusal = self._refusal(method, needed, token, identity)
            if refusal is not None:
                if method in AUDITED:
                    self._audit.record(method, identity, "", None, None, *refusal)
                return _denying(handler, *refusal)
        if method in AUDITED and handler.unary_unary:
            return self._audited(handler, method, identity)
        return handler

    @staticmethod
    def _refusal(method: str, needed: int | None, token: str,
                 identity: Identity | None) -> tuple[grpc.StatusCode, str] | None:
        if needed is None:
            return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any role"
        if needed == ENROLMENT:
            if token and (identity is None or identity.role != A.ROLE_AGENT):
                return grpc.StatusCode.UNAUTHENTICATED, "authorization: not a valid agent credential"
            return None  # no token: the request must carry enrolment tokens (checked by the servicer)
        if identity is None:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "authorization: missing, unknown, expired or revoked token (send 'authorization: Bearer <token>')")
        if not allows(identity.role, needed):
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"role {role_name(identity.role)} may not call {method.rsplit('/', 1)[-1]} "
                    f"(needs {role_name(needed)})")
        return None

    def _audited(self, handler: grpc.RpcMethodHandler, method: str,
                 identity: Identity | None) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary
        audit = self._audit

        async def audited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await behavior(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                audit.record(method, identity, context.peer(), request, None,
                             code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
                             context.details() or "")
                raise
            audit.record(method, identity, context.peer(), request, response, grpc.StatusCode.OK)
            return response

        return grpc.unary_unary_rpc_method_handler(audited, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
