"""Unit tests of the token store (fedops_control/access/tokens.py) and the role table (access/policy.py)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import utcnow
from fedops_common.proto import access_pb2, agent_pb2, control_pb2
from fedops_common.security import token_digest
from fedops_control.access import enrolment_tokens as et
from fedops_control.access import policy
from fedops_control.access.enrolment_tokens import EnrolmentUse, TokenRaced
from fedops_control.access.policy import AUDITED, ENROLMENT, METHOD_ROLES, OPEN, allows, required_role
from fedops_control.access.tokens import ENROLMENT_RETRY_WINDOW_S, PREFIX, Identity, TokenStore
from fedops_control.state.models import CredentialRow

A = access_pb2
API, ENROL, AGENT, RUN = A.TOKEN_KIND_API, A.TOKEN_KIND_ENROLMENT, A.TOKEN_KIND_AGENT, A.TOKEN_KIND_RUN


@pytest.fixture
def sessions(db_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    return db_sessions


@pytest.fixture
def tokens(sessions: sessionmaker[Session]) -> TokenStore:
    return TokenStore(sessions)


def expire(sessions: sessionmaker[Session], token_id: str) -> None:
    with sessions.begin() as db:
        db.get(CredentialRow, token_id).expires_at = utcnow() - dt.timedelta(seconds=1)


# ---------------------------------------------------------------- tokens

def test_issue_and_resolve(tokens: TokenStore, sessions: sessionmaker[Session]) -> None:
    secret, row = tokens.issue(API, A.ROLE_OPERATOR, "ci bot", created_by="admin")
    assert secret.startswith(PREFIX[API] + "_")
    identity = tokens.resolve(secret)
    assert identity is not None
    assert (identity.token_id, identity.kind, identity.role, identity.name) == (row.id, API, A.ROLE_OPERATOR, "ci bot")
    # only the digest is stored
    with sessions() as db:
        stored = db.get(CredentialRow, row.id)
        assert stored.secret_sha256 == token_digest(secret)
        assert secret not in (stored.secret_sha256, stored.name, stored.id)
    assert row.expires_at is None


def test_resolve_refuses_unknown_empty_and_oversized_secrets(tokens: TokenStore) -> None:
    secret, _ = tokens.issue(API, A.ROLE_VIEWER, "v")
    assert tokens.resolve(secret + "x") is None
    assert tokens.resolve("") is None
    assert tokens.resolve("f" * 513) is None
    long_secret, _ = tokens.issue(API, A.ROLE_VIEWER, "long", secret="s" * 600)
    assert tokens.resolve(long_secret) is None  # longer than any secret we accept


def test_subject_and_kinds_are_kept(tokens: TokenStore) -> None:
    agent_secret, _ = tokens.issue(AGENT, A.ROLE_AGENT, "agent", subject="client-a")
    run_secret, _ = tokens.issue(RUN, A.ROLE_RUN, "run", subject="run-1", ttl_s=3600)
    assert agent_secret.startswith("foa_") and run_secret.startswith("for_")
    agent = tokens.resolve(agent_secret)
    run = tokens.resolve(run_secret)
    assert (agent.kind, agent.role, agent.subject) == (AGENT, A.ROLE_AGENT, "client-a")
    assert (run.kind, run.role, run.subject) == (RUN, A.ROLE_RUN, "run-1")


def test_ttl_sets_expiry_and_expired_tokens_do_not_resolve(tokens: TokenStore, sessions: sessionmaker[Session]) -> None:
    secret, row = tokens.issue(API, A.ROLE_ADMIN, "short", ttl_s=60)
    assert row.expires_at is not None
    assert dt.timedelta(seconds=55) < row.expires_at - utcnow() <= dt.timedelta(seconds=60)
    assert tokens.resolve(secret) is not None
    expire(sessions, row.id)
    assert TokenStore(sessions).resolve(secret) is None  # as a restarted service reads it
    brief, _ = tokens.issue(API, A.ROLE_ADMIN, "brief", ttl_s=1)
    assert tokens.resolve(brief) is not None  # now cached, with its expiry
    time.sleep(1.1)
    assert tokens.resolve(brief) is None


def test_revoke(tokens: TokenStore) -> None:
    secret, row = tokens.issue(API, A.ROLE_ADMIN, "a")
    other, _ = tokens.issue(API, A.ROLE_ADMIN, "b")
    revoked = tokens.revoke(row.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert tokens.resolve(secret) is None
    assert tokens.resolve(other) is not None
    first_time = revoked.revoked_at
    assert tokens.revoke(row.id).revoked_at == first_time  # revoking again keeps the first time
    assert tokens.revoke("no-such-token") is None
    assert [r.name for r in tokens.list()] == ["b"]
    assert sorted(r.name for r in tokens.list(include_revoked=True)) == ["a", "b"]


def test_revoke_subject_only_touches_that_kind_and_subject(tokens: TokenStore) -> None:
    run1a, _ = tokens.issue(RUN, A.ROLE_RUN, "r", subject="run-1")
    run1b, _ = tokens.issue(RUN, A.ROLE_RUN, "r", subject="run-1")
    run2, _ = tokens.issue(RUN, A.ROLE_RUN, "r", subject="run-2")
    agent, _ = tokens.issue(AGENT, A.ROLE_AGENT, "a", subject="run-1")  # same subject, other kind
    tokens.revoke_subject(RUN, "run-1")
    assert tokens.resolve(run1a) is None and tokens.resolve(run1b) is None
    assert tokens.resolve(run2) is not None
    assert tokens.resolve(agent) is not None


def check(conn: Connection, secret: str, client_id: str) -> EnrolmentUse | None:
    """A registration's check of a token: its row read, then judged."""
    return et.enrolment_use(et.token_rows(conn, [secret]).get(secret), client_id, utcnow())


def redeem(tokens: TokenStore, conn: Connection, secret: str, client_id: str) -> EnrolmentUse | None:
    """What a registration does with a token: the check, then (when allowed) the compare-and-set."""
    use = check(conn, secret, client_id)
    if use is not None:
        et.mark_used(conn, [(use, client_id)], utcnow())
    return use


def holds(conn: Connection, client_id: str) -> bool:
    return client_id in et.credential_holders(conn, [client_id], utcnow())


def issue_credential(conn: Connection, name: str, client_id: str) -> tuple[str, Identity]:
    secret, identity, row = et.new_agent_credential(name, client_id, utcnow())
    et.insert_credentials(conn, [row])
    return secret, identity


def test_enrolment_tokens_are_one_time_and_never_resolve(tokens: TokenStore,
                                                         sessions: sessionmaker[Session]) -> None:
    engine = sessions.kw["bind"]
    secret, row = tokens.issue(ENROL, A.ROLE_AGENT, "enrol", ttl_s=3600, labels={"site": "eu"})
    assert secret.startswith("foe_")
    assert tokens.resolve(secret) is None  # not a credential for calls
    with engine.begin() as conn:
        redeemed = redeem(tokens, conn, secret, "client-a")
        assert redeemed is not None and redeemed.token_id == row.id and not redeemed.retry
        assert (redeemed.task_id, redeemed.name, redeemed.labels) == ("", "enrol", {"site": "eu"})
    with sessions() as db:
        stored = db.get(CredentialRow, row.id)
        assert stored.used_by == "client-a" and stored.used_at is not None
    with engine.begin() as conn:
        assert redeem(tokens, conn, secret, "client-b") is None  # used up
        again = redeem(tokens, conn, secret, "client-a")  # its response may have been lost
        assert again is not None and again.token_id == row.id and again.retry
    with sessions.begin() as db:  # the retry is allowed for a while only
        db.get(CredentialRow, row.id).used_at = utcnow() - dt.timedelta(seconds=ENROLMENT_RETRY_WINDOW_S + 1)
    with engine.begin() as conn:
        assert redeem(tokens, conn, secret, "client-a") is None


def test_redeem_is_undone_with_the_callers_transaction(tokens: TokenStore, sessions: sessionmaker[Session]) -> None:
    secret, row = tokens.issue(ENROL, A.ROLE_AGENT, "enrol")
    with pytest.raises(RuntimeError), sessions.kw["bind"].begin() as conn:
        assert redeem(tokens, conn, secret, "client-a") is not None
        raise RuntimeError("registration failed later")
    with sessions.kw["bind"].begin() as conn:
        use = redeem(tokens, conn, secret, "client-b")  # unused
        assert use is not None and use.token_id == row.id and not use.retry


def test_a_token_is_used_once_even_by_transactions_that_both_found_it_unused(
        tokens: TokenStore, sessions: sessionmaker[Session]) -> None:
    """mark_used is a compare-and-set: PostgreSQL runs several registration transactions at once."""
    secret, _ = tokens.issue(ENROL, A.ROLE_AGENT, "enrol")
    engine = sessions.kw["bind"]
    with engine.connect() as conn:
        first = check(conn, secret, "client-a")
        second = check(conn, secret, "client-b")
    assert first is not None and second is not None  # both checked before either wrote
    with engine.begin() as conn:
        et.mark_used(conn, [(first, "client-a")], utcnow())
    with pytest.raises(TokenRaced), engine.begin() as conn:
        et.mark_used(conn, [(second, "client-b")], utcnow())
    with engine.connect() as conn:
        assert check(conn, secret, "client-b") is None
        retry = check(conn, secret, "client-a")
        assert retry is not None and retry.retry


def test_redeem_refuses_expired_revoked_and_other_kinds(tokens: TokenStore, sessions: sessionmaker[Session]) -> None:
    expired, expired_row = tokens.issue(ENROL, A.ROLE_AGENT, "e")
    revoked, revoked_row = tokens.issue(ENROL, A.ROLE_AGENT, "r")
    api, _ = tokens.issue(API, A.ROLE_ADMIN, "api")
    expire(sessions, expired_row.id)
    tokens.revoke(revoked_row.id)
    with sessions.kw["bind"].begin() as conn:
        for secret in (expired, revoked, api, "", "foe_unknown", "f" * 513):
            assert redeem(tokens, conn, secret, "client-a") is None, secret


def test_agent_credentials_issue_find_and_revoke(tokens: TokenStore, sessions: sessionmaker[Session]) -> None:
    engine = sessions.kw["bind"]
    tokens.issue(RUN, A.ROLE_RUN, "run", subject="client-b")
    with engine.begin() as conn:
        assert not holds(conn, "client-a")
        secret, identity = issue_credential(conn, "lab-pc", "client-a")
        assert holds(conn, "client-a")
        assert not holds(conn, "client-b")  # a run token of that subject
    assert secret.startswith("foa_")
    assert tokens.resolve(secret) == identity == Identity(identity.token_id, AGENT, A.ROLE_AGENT, "lab-pc", "client-a")
    with engine.begin() as conn:
        et.revoke_agent_credentials(conn, ["client-a"], utcnow())
        assert not holds(conn, "client-a")
    assert tokens.resolve(secret) is not None  # cached: the caller forgets once its transaction committed
    tokens.forget_resolved()
    assert tokens.resolve(secret) is None


def test_a_remembered_credential_needs_no_lookup_unless_a_revocation_came_between(
        tokens: TokenStore, sessions: sessionmaker[Session]) -> None:
    engine = sessions.kw["bind"]
    generation = tokens.generation
    with engine.begin() as conn:
        secret, identity = issue_credential(conn, "a", "client-a")
    tokens.remember(secret, identity, None, generation)
    assert tokens.cached(secret) == (True, identity)
    generation = tokens.generation
    with engine.begin() as conn:
        other, other_identity = issue_credential(conn, "b", "client-b")
    tokens.forget_resolved()  # a revocation committed meanwhile
    tokens.remember(other, other_identity, None, generation)
    assert tokens.cached(other) == (False, None) and tokens.cached(secret) == (False, None)
    assert tokens.resolve(other) == other_identity  # from the database


def test_ensure_admin_is_idempotent(tokens: TokenStore) -> None:
    tokens.ensure_admin("bootstrap-secret")
    tokens.ensure_admin("bootstrap-secret")
    identity = tokens.resolve("bootstrap-secret")
    assert identity is not None and identity.role == A.ROLE_ADMIN
    assert len(tokens.list(kind=API)) == 1


def test_issue_inside_a_callers_transaction(tokens: TokenStore, sessions: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), sessions.begin() as db:
        secret, _ = tokens.issue(AGENT, A.ROLE_AGENT, "agent", subject="c", db=db)
        raise RuntimeError("rolled back")
    assert tokens.resolve(secret) is None
    assert tokens.list() == []


# ---------------------------------------------------------------- policy

def _served_methods() -> list[str]:
    """Every RPC of every service in the generated stubs."""
    methods = []
    for module in (control_pb2, access_pb2, agent_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods += [f"/{service.full_name}/{method.name}" for method in service.methods]
    return methods


def test_every_rpc_has_a_role_and_no_entry_is_stale() -> None:
    served = _served_methods()
    assert len(served) >= 25  # the four services
    missing = [m for m in served if required_role(m) is None]
    assert missing == [], f"RPCs without an entry in fedops_control/access/policy.py: {missing}"
    stale = sorted(set(METHOD_ROLES) - set(served))
    assert stale == [], f"policy entries for RPCs that do not exist: {stale}"
    assert AUDITED <= set(METHOD_ROLES)


def test_unknown_methods_are_refused_and_health_is_open() -> None:
    assert required_role("/fedops.v1.ControlService/DropDatabase") is None
    assert required_role("/fedops.v1.ControlService/getrun") is None  # names are exact
    assert required_role("/grpc.health.v1.Health/Check") == OPEN
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == OPEN
    assert required_role("/fedops.v1.AgentService/Register") == ENROLMENT


CTL, ACC, AGT, OBS = (policy._CONTROL, policy._ACCESS, policy._AGENT, policy._OBSERVER)


@pytest.mark.parametrize("role, method, allowed", [
    (A.ROLE_VIEWER, CTL + "GetRun", True),
    (A.ROLE_VIEWER, CTL + "WatchRun", True),
    (A.ROLE_VIEWER, CTL + "DownloadModel", True),
    (A.ROLE_VIEWER, CTL + "StartRun", False),
    (A.ROLE_VIEWER, CTL + "CreateTask", False),
    (A.ROLE_VIEWER, ACC + "CreateEnrolmentToken", False),
    (A.ROLE_VIEWER, ACC + "WhoAmI", True),
    (A.ROLE_OPERATOR, CTL + "StartRun", True),
    (A.ROLE_OPERATOR, CTL + "DeleteTask", True),
    (A.ROLE_OPERATOR, CTL + "ListRuns", True),
    (A.ROLE_OPERATOR, ACC + "CreateEnrolmentToken", True),
    (A.ROLE_OPERATOR, ACC + "CreateApiToken", False),
    (A.ROLE_OPERATOR, ACC + "RevokeToken", False),
    (A.ROLE_ADMIN, ACC + "CreateApiToken", True),
    (A.ROLE_ADMIN, ACC + "ListTokens", True),
    (A.ROLE_ADMIN, CTL + "StopRun", True),
    (A.ROLE_ADMIN, AGT + "Session", False),           # agent and run roles stand alone
    (A.ROLE_ADMIN, OBS + "ReportServerEvent", False),
    (A.ROLE_AGENT, AGT + "Session", True),
    (A.ROLE_AGENT, OBS + "ReportClientEvent", True),
    (A.ROLE_AGENT, OBS + "ReportServerEvent", False),
    (A.ROLE_AGENT, CTL + "GetRun", False),            # an agent is not an operator of any rank
    (A.ROLE_AGENT, ACC + "WhoAmI", True),
    (A.ROLE_RUN, OBS + "ReportServerEvent", True),
    (A.ROLE_RUN, OBS + "UploadModel", True),
    (A.ROLE_RUN, OBS + "FetchModel", True),
    (A.ROLE_RUN, OBS + "ReportClientEvent", False),
    (A.ROLE_RUN, CTL + "ListModels", False),
    (A.ROLE_UNSPECIFIED, CTL + "GetRun", False),
])
def test_role_table(role: int, method: str, allowed: bool) -> None:
    needed = required_role(method)
    assert needed is not None
    assert allows(role, needed) is allowed
