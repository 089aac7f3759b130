"""AccessService: API tokens, enrolment tokens, revocation, who am I."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import to_timestamp
from fedops_common.proto import access_pb2, access_pb2_grpc
from fedops_control.access.interceptor import AccessControl
from fedops_control.access.tokens import (
    DEFAULT_ENROLMENT_TTL_S,
    MAX_TTL_S,
    OPERATOR_ROLES,
)
from fedops_control.clients.labels import validated
from fedops_control.errors import InvalidArgument, NotFound
from fedops_control.server.errors import grpc_errors
from fedops_control.state.models import CredentialRow, TaskRow

A = access_pb2


def token_to_proto(row: CredentialRow) -> access_pb2.TokenInfo:
    """Token metadata; never the secret."""
    info = A.TokenInfo(token_id=row.id, kind=A.TokenKind.ValueType(row.kind), name=row.name,
                       role=A.Role.ValueType(row.role), subject=row.subject,
                       created_at=to_timestamp(row.created_at), created_by=row.created_by, labels=row.labels or {})
    for field in ("expires_at", "used_at", "revoked_at"):
        if getattr(row, field) is not None:
            getattr(info, field).CopyFrom(to_timestamp(getattr(row, field)))
    return info


def _ttl(field: str, ttl_s: int) -> int:
    if not 0 <= ttl_s <= MAX_TTL_S:
        raise InvalidArgument(field, f"must be between 0 and {MAX_TTL_S} seconds")
    return ttl_s


def _name(name: str) -> str:
    if len(name) > 200 or any(ord(c) < 32 for c in name):
        raise InvalidArgument("name", "at most 200 printable characters")
    return name


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    """Implements fedops.v1.AccessService (the interceptor has already checked the caller's role)."""

    def __init__(self, sessions: sessionmaker[Session], access: AccessControl) -> None:
        self._sessions = sessions
        self._access = access

    def _caller(self, context) -> str:
        identity = self._access.identity(context)
        return f"{identity.name} ({identity.token_id})" if identity and identity.token_id else "anonymous"

    @grpc_errors
    async def WhoAmI(self, request, context):
        identity = self._access.identity(context)
        return A.Identity(token_id=identity.token_id, name=identity.name, role=identity.role,
                          subject=identity.subject)

    @grpc_errors
    async def CreateApiToken(self, request, context):
        if request.role not in OPERATOR_ROLES:
            raise InvalidArgument("role", "one of ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN")
        if not request.name.strip():
            raise InvalidArgument("name", "required: who or what holds the token")
        secret, row = self._access.tokens.issue(A.TOKEN_KIND_API, request.role, _name(request.name),
                                                ttl_s=_ttl("ttl_s", request.ttl_s), created_by=self._caller(context))
        return A.IssuedToken(token=secret, info=token_to_proto(row))

    @grpc_errors
    async def CreateEnrolmentToken(self, request, context):
        if not request.task_id:
            raise InvalidArgument("task_id", "required")
        with self._sessions() as db:
            if db.get(TaskRow, request.task_id) is None:
                raise NotFound(f"task {request.task_id} not found")
        ttl = _ttl("ttl_s", request.ttl_s) or DEFAULT_ENROLMENT_TTL_S
        labels = validated("labels", request.labels)
        secret, row = self._access.tokens.issue(A.TOKEN_KIND_ENROLMENT, A.ROLE_AGENT, _name(request.name),
                                                subject=request.task_id, ttl_s=ttl, created_by=self._caller(context),
                                                labels=labels)
        return A.IssuedToken(token=secret, info=token_to_proto(row))

    @grpc_errors
    async def ListTokens(self, request, context):
        if request.kind not in A.TokenKind.values():
            raise InvalidArgument("kind", "unknown token kind")
        rows = self._access.tokens.list(request.kind, request.include_revoked)
        return A.ListTokensResponse(tokens=[token_to_proto(row) for row in rows])

    @grpc_errors
    async def RevokeToken(self, request, context):
        if not request.token_id:
            raise InvalidArgument("token_id", "required")
        if len(request.token_id) > 32:
            raise NotFound(f"token {request.token_id[:40]!r} not found")
        row = self._access.tokens.revoke(request.token_id)
        if row is None:
            raise NotFound(f"token {request.token_id} not found")
        return token_to_proto(row)
