"""Issue, resolve and revoke tokens. Only a SHA-256 of each secret is stored.

Secrets are 256-bit random values, so a plain hash (no salt, no slow KDF) is what API-token
stores commonly use: it cannot be brute-forced and lets a token be found by its hash.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import utcnow
from fedops_common.proto import access_pb2
from fedops_common.security import token_digest
from fedops_control.state.models import CredentialRow

A = access_pb2
PREFIX: dict[int, str] = {A.TOKEN_KIND_API: "fop", A.TOKEN_KIND_ENROLMENT: "foe", A.TOKEN_KIND_AGENT: "foa",
                          A.TOKEN_KIND_RUN: "for"}
OPERATOR_ROLES = (A.ROLE_VIEWER, A.ROLE_OPERATOR, A.ROLE_ADMIN)
DEFAULT_ENROLMENT_TTL_S = 24 * 3600
MAX_TTL_S = 10 * 365 * 24 * 3600
# A device may redeem its one-time token again this long after the first use: the response carrying
# its credential can be lost (the agent's 10 s deadline passed while the service was busy), and the
# agent then retries with the same token. Under load 8 of 5,000 (SQLite) and 51 of 1,000 (PostgreSQL)
# devices were locked out that way. Only the same device id, so the token still enrols one device.
ENROLMENT_RETRY_WINDOW_S = 600
RESOLVE_CACHE_MAX = 100_000  # ~200 B per entry: every agent of a 10,000-device fleet, and operators
MAX_SECRET_CHARS = 512  # longer than any secret we issue: refused before it is hashed or looked up
CREDENTIALS = cast(Table, CredentialRow.__table__)  # the table (the ORM declares any FromClause)


@dataclass(frozen=True)
class Identity:
    """Who a valid token belongs to."""

    token_id: str
    kind: int
    role: int
    name: str
    subject: str = ""


# Every check passes for this identity: used when the service runs with --no-auth.
ANONYMOUS_ADMIN = Identity(token_id="", kind=A.TOKEN_KIND_UNSPECIFIED, role=A.ROLE_ADMIN, name="anonymous")


def is_active(row: Any, now: dt.datetime) -> bool:
    """Not revoked and not expired at ``now``."""
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


# The statements of the hot paths (every agent's registration and first session), built once with bind
# parameters: SQLAlchemy then finds each one's compiled form without rebuilding it or its cache key,
# which was most of the CPU time of a Core statement built per call (cProfile, bench/enrolment_cost.py).
_C = CREDENTIALS.c
_BY_DIGEST = select(CREDENTIALS).where(_C.secret_sha256 == bindparam("digest"))



def _find(db: Session | Connection, secret: str) -> Any:
    """The row of a secret (a Core row: no ORM object), found by its digest.

    Looked up by its SHA-256 in the unique index, not compared in Python: a timing difference could
    at most reveal a prefix of the digest of a 256-bit random secret, which does not help to find
    the secret (the usual API-token store design)."""
    return db.execute(_BY_DIGEST, {"digest": token_digest(secret)}).first()


class TokenStore:
    """Tokens of every kind, in the control service's database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        # digest -> (identity, expiry): every RPC and every agent session presents a token, and looking
        # each one up in the database cost a query per call. Exact, not a TTL: this process is the only
        # one that revokes tokens, and revoking clears the cache.
        self._resolved: dict[str, tuple[Identity, dt.datetime | None]] = {}
        self._lock = threading.Lock()
        self._generation = 0

    def forget_resolved(self) -> None:
        """Empty the cache of resolved tokens: after any revocation has committed (a lookup between
        clearing and committing would cache the old credential again)."""
        with self._lock:
            self._resolved.clear()
            self._generation += 1

    @property
    def generation(self) -> int:
        """Changes whenever the cache is emptied: :meth:`remember` takes the value read before the
        transaction that issued the token, and remembers nothing if a revocation came in between."""
        return self._generation

    def remember(self, secret: str, identity: Identity, expires: dt.datetime | None, generation: int) -> None:
        """Cache the identity of a token this process has just issued and committed, so that its first
        use (an agent's session, right after its registration) needs no database lookup."""
        digest = token_digest(secret)
        with self._lock:
            if generation != self._generation:
                return
            if len(self._resolved) >= RESOLVE_CACHE_MAX:
                self._resolved.clear()
            self._resolved[digest] = (identity, expires)

    def issue(self, kind: int, role: int, name: str, subject: str = "", ttl_s: int = 0, created_by: str = "",
              secret: str | None = None, db: Session | None = None,
              labels: dict[str, str] | None = None) -> tuple[str, CredentialRow]:
        """Create a token (inside ``db``'s transaction when given); returns the secret (shown once) and its row.
        ``labels``: an enrolment token's, given to the client it enrols."""
        token_id = secrets.token_hex(8)
        secret = secret or f"{PREFIX[kind]}_{secrets.token_urlsafe(32)}"
        expires = utcnow() + dt.timedelta(seconds=ttl_s) if ttl_s > 0 else None
        row = CredentialRow(id=token_id, kind=kind, secret_sha256=token_digest(secret), name=name[:200], role=role,
                            subject=subject, created_by=created_by[:200], created_at=utcnow(), expires_at=expires,
                            labels=dict(labels or {}))
        if db is not None:
            db.add(row)
            return secret, row
        with self._sessions.begin() as own:
            own.add(row)
        return secret, row

    def resolve(self, secret: str) -> Identity | None:
        """The identity of an active token, or None (unknown, expired, revoked or an enrolment token)."""
        if not secret or len(secret) > MAX_SECRET_CHARS:
            return None
        known, identity = self.cached(secret)
        if known:
            return identity
        generation = self._generation
        with self._sessions() as db:
            row = _find(db, secret)
        if row is None or row.kind == A.TOKEN_KIND_ENROLMENT or not is_active(row, utcnow()):
            return None
        identity = Identity(token_id=row.id, kind=row.kind, role=row.role, name=row.name, subject=row.subject)
        self.remember(secret, identity, row.expires_at, generation)
        return identity

    def cached(self, secret: str) -> tuple[bool, Identity | None]:
        """(True, identity) when the token was resolved before (no database work), else (False, None)."""
        cached = self._resolved.get(token_digest(secret)) if secret and len(secret) <= MAX_SECRET_CHARS else None
        if cached is None:
            return False, None
        identity, expires = cached
        return True, identity if expires is None or expires > utcnow() else None

    def list(self, kind: int = 0, include_revoked: bool = False) -> list[CredentialRow]:
        """Token rows (no secrets), newest first."""
        with self._sessions() as db:
            query = db.query(CredentialRow)
            if kind:
                query = query.filter(CredentialRow.kind == kind)
            if not include_revoked:
                query = query.filter(CredentialRow.revoked_at.is_(None))
            return query.order_by(CredentialRow.created_at.desc()).all()

    def revoke(self, token_id: str) -> CredentialRow | None:
        """Revoke a token now; None when there is no such token."""
        with self._sessions.begin() as db:
            row = db.get(CredentialRow, token_id)
            if row is not None and row.revoked_at is None:
                row.revoked_at = utcnow()
        self.forget_resolved()
        with self._sessions() as db:
            return db.get(CredentialRow, token_id)

    def revoke_subject(self, kind: int, subject: str) -> None:
        """Revoke every token of a kind for a subject (e.g. a run's token when the run ends)."""
        with self._sessions.begin() as db:
            for row in db.query(CredentialRow).filter(CredentialRow.kind == kind, CredentialRow.subject == subject,
                                                      CredentialRow.revoked_at.is_(None)):
                row.revoked_at = utcnow()
        self.forget_resolved()

    def ensure_admin(self, secret: str, name: str = "bootstrap admin") -> None:
        """Make ``secret`` a valid admin token (idempotent): the bootstrap token of a fresh service."""
        with self._sessions() as db:
            found = _find(db, secret)
        if found is None:
            self.issue(A.TOKEN_KIND_API, A.ROLE_ADMIN, name, created_by="fedops-control", secret=secret)
