"""The token side of registrations: enrolment tokens used up, agent credentials issued and revoked.

Set-based: each function takes a whole group of registrations' tokens or clients and costs one
statement, whatever the group's size. On PostgreSQL every statement is a round trip and about
0.14 ms of the service's CPU (``bench/enrolment_cost.py``: 7 statements per enrolment cost 0.99 ms
in groups of 64), so a group's reads and writes are a handful of statements, not a handful per device.
The caller's transaction holds them; nothing here commits.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from fedops_common.proto import access_pb2
from fedops_common.security import token_digest
from fedops_control.access.tokens import (
    CREDENTIALS,
    ENROLMENT_RETRY_WINDOW_S,
    MAX_SECRET_CHARS,
    PREFIX,
    Identity,
    is_active,
)
from fedops_control.state.keyed import KeyedSelect

A = access_pb2
_C = CREDENTIALS.c
# Built once with (expanding) bind parameters: SQLAlchemy reuses their compiled forms.
_BY_DIGESTS = KeyedSelect(select(CREDENTIALS), _C.secret_sha256)
_HOLDERS = KeyedSelect(select(_C.subject).distinct().where(
    _C.kind == A.TOKEN_KIND_AGENT, _C.revoked_at.is_(None),
    _C.expires_at.is_(None) | (_C.expires_at > bindparam("now"))), _C.subject)
_MARK_USED = (update(CREDENTIALS).where(_C.id == bindparam("token_id"), _C.used_at.is_(None))
              .values(used_at=bindparam("at"), used_by=bindparam("client_id")))
_REVOKE_AGENT = (update(CREDENTIALS).where(_C.kind == A.TOKEN_KIND_AGENT, _C.subject == bindparam("client_id"),
                                           _C.revoked_at.is_(None)).values(revoked_at=bindparam("at")))
_INSERT = insert(CREDENTIALS)


@dataclass(frozen=True)
class EnrolmentUse:
    """A valid one-time enrolment token that a client may use now (nothing written yet).

    ``retry``: the same client used it already, less than ENROLMENT_RETRY_WINDOW_S ago (its first
    response may have been lost); nothing is to be marked then.
    """

    token_id: str
    task_id: str
    name: str
    labels: dict[str, str]
    retry: bool


class TokenRaced(RuntimeError):
    """An enrolment token was used by a concurrent transaction between the check and the write."""


def token_rows(conn: Connection, secrets_: Iterable[str]) -> dict[str, Any]:
    """secret -> its credential row (Core rows), for the secrets that exist; one SELECT by digest.

    Looked up by SHA-256 in the unique index, never compared in Python (see tokens.py)."""
    digests = {token_digest(secret): secret for secret in secrets_ if secret and len(secret) <= MAX_SECRET_CHARS}
    return {digests[row.secret_sha256]: row for row in _BY_DIGESTS(conn, digests)}


def enrolment_use(row: Any, client_id: str, now: dt.datetime) -> EnrolmentUse | None:
    """Whether ``client_id`` may enrol with the token of ``row`` now (no database work).

    None when it is not an enrolment token, expired, revoked, or used: by another client, or by this
    one longer than ENROLMENT_RETRY_WINDOW_S ago."""
    if row is None or row.kind != A.TOKEN_KIND_ENROLMENT or not is_active(row, now):
        return None
    retry = row.used_at is not None
    if retry and (row.used_by != client_id or (now - row.used_at).total_seconds() >= ENROLMENT_RETRY_WINDOW_S):
        return None
    return EnrolmentUse(token_id=row.id, task_id=row.subject, name=row.name, labels=dict(row.labels or {}),
                        retry=retry)


def credential_holders(conn: Connection, client_ids: Collection[str], now: dt.datetime) -> set[str]:
    """Those of ``client_ids`` that hold an active agent credential (then only it may act as them)."""
    return {subject for (subject,) in _HOLDERS(conn, client_ids, now=now)}


def mark_used(conn: Connection, uses: list[tuple[EnrolmentUse, str]], now: dt.datetime) -> None:
    """Use up tokens (each with the client that redeems it) inside the caller's transaction; retries
    need nothing.

    A compare-and-set (``... WHERE used_at IS NULL``): two transactions that both found a token unused
    (PostgreSQL runs several) cannot both use it; the second gets TokenRaced and must roll back."""
    params = [{"token_id": use.token_id, "at": now, "client_id": client_id} for use, client_id in uses
              if not use.retry]
    if params and conn.execute(_MARK_USED, params).rowcount != len(params):
        ids = ", ".join(sorted(use.token_id for use, _ in uses if not use.retry))
        raise TokenRaced(f"one of the enrolment tokens {ids} was used concurrently")


def revoke_agent_credentials(conn: Connection, client_ids: Collection[str], now: dt.datetime) -> None:
    """Revoke these clients' agent credentials inside the caller's transaction (before new ones are
    inserted); the caller calls ``TokenStore.forget_resolved`` once that transaction has committed."""
    if client_ids:
        conn.execute(_REVOKE_AGENT, [{"client_id": client_id, "at": now} for client_id in client_ids])


def new_agent_credential(name: str, client_id: str, now: dt.datetime) -> tuple[str, Identity, dict[str, Any]]:
    """A new agent credential: its secret (shown once), its identity (for ``TokenStore.remember`` once
    committed) and its row, for :func:`insert_credentials`."""
    token_id = secrets.token_hex(8)
    secret = f"{PREFIX[A.TOKEN_KIND_AGENT]}_{secrets.token_urlsafe(32)}"
    name = name[:200]
    row = {"id": token_id, "kind": A.TOKEN_KIND_AGENT, "secret_sha256": token_digest(secret), "name": name,
           "role": A.ROLE_AGENT, "subject": client_id, "created_by": "enrolment token", "created_at": now,
           "expires_at": None, "used_at": None, "used_by": "", "labels": {}, "revoked_at": None}
    return secret, Identity(token_id=token_id, kind=A.TOKEN_KIND_AGENT, role=A.ROLE_AGENT, name=name,
                            subject=client_id), row


def insert_credentials(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert credential rows (from :func:`new_agent_credential`) in one statement."""
    if rows:
        conn.execute(_INSERT, rows)
