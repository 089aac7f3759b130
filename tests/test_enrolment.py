"""The Register transaction and its group commit (fedops_control/agents/enrolment.py), on a real SQLite
file without a server: enrolment with a one-time token, a retried enrolment, a token another device
tries to reuse, a group in which some registrations are refused or fail, labels, and the statements a
known device's re-registration costs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import utcnow
from fedops_common.proto import access_pb2, common_pb2
from fedops_control.access import enrolment_tokens
from fedops_control.access.tokens import TokenStore
from fedops_control.agents.enrolment import Registered, Registrar, Registration
from fedops_control.clients.labels import LabelSource, labels_of, set_labels
from fedops_control.errors import InvalidArgument, PermissionDenied, Unauthenticated
from fedops_control.state.db import DatabaseWriter
from fedops_control.state.models import ClientRow, CredentialRow, MembershipRow, TaskRow

A, S = access_pb2, common_pb2


@pytest.fixture
def tokens(db_sessions: sessionmaker[Session]) -> TokenStore:
    with db_sessions.begin() as db:
        db.add_all([TaskRow(id=task, title=task, app={}, strategy={}) for task in ("task-1", "task-2")])
    return TokenStore(db_sessions)


@pytest.fixture
def registrar(db_sessions: sessionmaker[Session], tokens: TokenStore) -> Registrar:
    return Registrar(db_sessions, tokens)


class Statements:
    """SQL statements and commits on the engine (SQLAlchemy events), counted from a point on."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sql: list[str] = []
        self.commits = 0
        engine = sessions.kw["bind"]
        event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: self.sql.append(statement))
        event.listen(engine, "commit", lambda _conn: setattr(self, "commits", self.commits + 1))

    def reset(self) -> None:
        self.sql, self.commits = [], 0


@pytest.fixture
def statements(db_sessions: sessionmaker[Session]) -> Iterator[Statements]:
    yield Statements(db_sessions)


def token(tokens: TokenStore, task_id: str = "task-1", name: str = "", labels: dict[str, str] | None = None) -> str:
    secret, _row = tokens.issue(A.TOKEN_KIND_ENROLMENT, A.ROLE_AGENT, name, subject=task_id, labels=labels)
    return secret


def enrolment(device: str, *secrets: str, labels: dict[str, str] | None = None, credential: bool = False,
              task_ids: tuple[str, ...] = ()) -> Registration:
    return Registration(client_id=f"client-{device}", device={"device_id": device, "hostname": f"host-{device}"},
                        data_path="/data", labels=dict(labels or {}), enrolment_tokens=secrets, task_ids=task_ids,
                        authenticated=credential)


def ok(result: Registered | Exception) -> Registered:
    assert isinstance(result, Registered), result
    return result


def clients(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as db:
        return sorted(db.scalars(select(ClientRow.id)))


def credentials_of(sessions: sessionmaker[Session], client_id: str) -> list[tuple[str, bool]]:
    """(name, revoked) of a client's agent credentials."""
    with sessions() as db:
        return sorted((row.name, row.revoked_at is not None) for row in db.query(CredentialRow).filter(
            CredentialRow.kind == A.TOKEN_KIND_AGENT, CredentialRow.subject == client_id))


def test_a_new_device_enrols_with_its_token_and_a_retry_gets_the_same_client_and_a_new_credential(
        registrar: Registrar, tokens: TokenStore, db_sessions: sessionmaker[Session]) -> None:
    secret = token(tokens, name="lab-pc-7")
    [first] = registrar.commit([enrolment("d1", secret)])
    first = ok(first)
    assert first.task_ids == ["task-1"] and first.credential.startswith("foa_")
    identity = tokens.cached(first.credential)[1]  # remembered once committed: the session needs no lookup
    assert identity is not None and identity.subject == "client-d1" and identity.name == "lab-pc-7"
    # The response was lost: the agent retries with the same token.
    [retry] = registrar.commit([enrolment("d1", secret)])
    retry = ok(retry)
    assert retry.task_ids == ["task-1"] and retry.credential not in ("", first.credential)
    assert tokens.resolve(first.credential) is None  # the credential that never arrived is revoked
    assert tokens.resolve(retry.credential) is not None
    assert clients(db_sessions) == ["client-d1"]
    assert credentials_of(db_sessions, "client-d1") == [("lab-pc-7", False), ("lab-pc-7", True)]
    with db_sessions() as db:
        row = db.get_one(ClientRow, "client-d1")
        assert (row.name, row.state, row.device["hostname"]) == ("lab-pc-7", S.CLIENT_STATE_ONLINE, "host-d1")
        assert db.query(MembershipRow).filter(MembershipRow.client_id == "client-d1").count() == 1
    # With its credential it registers as itself; a second enrolment without it is refused.
    assert ok(registrar.commit([enrolment("d1", credential=True)])[0]) == Registered("", ["task-1"])
    [again] = registrar.commit([enrolment("d1", token(tokens))])
    assert isinstance(again, PermissionDenied) and "enrolled already" in str(again)


def test_a_used_token_enrols_no_other_device_and_a_refused_registration_writes_nothing(
        registrar: Registrar, tokens: TokenStore, db_sessions: sessionmaker[Session]) -> None:
    secret = token(tokens)
    ok(registrar.commit([enrolment("d1", secret)])[0])
    [stolen] = registrar.commit([enrolment("d2", secret)])
    assert isinstance(stolen, Unauthenticated)
    [none] = registrar.commit([enrolment("d3")])
    assert isinstance(none, Unauthenticated) and "enrolment token" in str(none)
    # A good token with a task it does not hold: refused before anything is written, the token stays unused.
    fresh = token(tokens, "task-1")
    [other_task] = registrar.commit([enrolment("d4", fresh, task_ids=("task-2",))])
    assert isinstance(other_task, PermissionDenied) and "task-2" in str(other_task)
    assert clients(db_sessions) == ["client-d1"] and credentials_of(db_sessions, "client-d4") == []
    ok(registrar.commit([enrolment("d4", fresh)])[0])


def test_a_group_commits_once_and_a_refused_registration_does_not_fail_the_others(
        registrar: Registrar, tokens: TokenStore, db_sessions: sessionmaker[Session], statements: Statements) -> None:
    secrets = [token(tokens) for _ in range(4)]
    with db_sessions.begin() as db:
        db.add(TaskRow(id="task-gone", title="gone", app={}, strategy={}))
    orphan = token(tokens, "task-gone")
    with db_sessions.begin() as db:
        db.delete(db.get_one(TaskRow, "task-gone"))
    statements.reset()
    group = [enrolment("d0", secrets[0]), enrolment("d1", "foe_not-a-token"), enrolment("d2", secrets[2]),
             enrolment("d3", secrets[0]),  # the token d0 used in this very group
             enrolment("d4", orphan), enrolment("d5", secrets[3], task_ids=("no-such-task",)),
             enrolment("d6", secrets[1], labels={"site": "eu"}),
             Registration(client_id="client-late", device={"device_id": "late"}, enrolment_tokens=(secrets[2],),
                          expires=time.monotonic() - 1)]
    results = registrar.commit(group)
    assert statements.commits == 1  # one transaction for the whole group
    assert [type(r).__name__ for r in results] == ["Registered", "Unauthenticated", "Registered", "Unauthenticated",
                                                  "InvalidArgument", "InvalidArgument", "Registered", "Overloaded"]
    assert isinstance(results[4], InvalidArgument) and "task-gone" in str(results[4])
    assert clients(db_sessions) == ["client-d0", "client-d2", "client-d6"]
    with db_sessions() as db:
        assert labels_of(db, ["client-d6"]) == {"client-d6": {"site": "eu"}}
    assert ok(registrar.commit([enrolment("d5", secrets[3])])[0]).task_ids == ["task-1"]  # its token unused


def test_a_group_costs_the_same_statements_whatever_its_size(
        registrar: Registrar, tokens: TokenStore, db_sessions: sessionmaker[Session], statements: Statements) -> None:
    """Set-based: a group's reads are one SELECT each (tokens, clients, tasks) and its new rows one
    INSERT per table, so 4 new devices and 40 cost the same statements (on PostgreSQL each is a
    round trip)."""
    counts = []
    for size in (4, 40):
        group = [enrolment(f"n{size}-{i}", token(tokens, name=f"pc-{i}"), labels={"site": "eu"}) for i in range(size)]
        statements.reset()
        results = registrar.commit(group)
        assert all(isinstance(r, Registered) for r in results), results
        counts.append([sql.split()[0] for sql in statements.sql])
    assert counts[0] == counts[1] == ["SELECT"] * 3 + ["UPDATE"] + ["INSERT"] * 4, counts
    assert len(clients(db_sessions)) == 44
    with db_sessions() as db:
        assert labels_of(db, ["client-n40-39"]) == {"client-n40-39": {"site": "eu"}}
        assert db.get_one(ClientRow, "client-n40-39").name == "pc-39"


def test_a_device_twice_in_one_group_sees_its_own_earlier_registration(
        registrar: Registrar, tokens: TokenStore, db_sessions: sessionmaker[Session]) -> None:
    """The same device (its enrolment, then the retry of a lost response) in one group: the retry is
    checked against what the enrolment wrote, as it would be a group later."""
    secret = token(tokens, name="lab-pc")
    first, retry, other = registrar.commit([enrolment("d1", secret), enrolment("d1", secret),
                                            enrolment("d2", token(tokens))])
    first, retry = ok(first), ok(retry)
    ok(other)
    assert retry.credential not in ("", first.credential)
    assert tokens.resolve(first.credential) is None and tokens.resolve(retry.credential) is not None
    assert credentials_of(db_sessions, "client-d1") == [("lab-pc", False), ("lab-pc", True)]
    assert clients(db_sessions) == ["client-d1", "client-d2"]


def test_a_group_whose_write_fails_is_done_again_one_registration_at_a_time(
        registrar: Registrar, tokens: TokenStore, db_sessions: sessionmaker[Session], statements: Statements) -> None:
    """A write the checks could not foresee (on PostgreSQL: another transaction's registration of the same
    device or token) rolls the group back; each registration then runs alone and only that one fails,
    with nothing of it written."""
    with db_sessions.begin() as db:  # a real failure, in the database itself
        db.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON clients WHEN NEW.id = 'client-bad' "
                        "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"))
    secrets = [token(tokens) for _ in range(3)]
    statements.reset()
    results = registrar.commit([enrolment("ok1", secrets[0]), enrolment("bad", secrets[1]),
                                enrolment("ok2", secrets[2])])
    ok(results[0]), ok(results[2])
    assert isinstance(results[1], Exception) and not isinstance(results[1], Registered)
    assert statements.commits == 2  # the group rolled back, then ok1 and ok2 alone (bad twice, rolled back)
    assert clients(db_sessions) == ["client-ok1", "client-ok2"]
    assert credentials_of(db_sessions, "client-bad") == []
    with db_sessions.begin() as db:
        db.execute(text("DROP TRIGGER refuse"))
    ok(registrar.commit([enrolment("bad", secrets[1])])[0])  # its token was never used


def test_labels_at_enrolment_and_a_reconnect_is_reads_only(
        registrar: Registrar, tokens: TokenStore, db_sessions: sessionmaker[Session], statements: Statements) -> None:
    secret = token(tokens, labels={"site": "eu", "tier": "edge"})
    ok(registrar.commit([enrolment("d1", secret, labels={"site": "us", "gpu": "true"})])[0])

    def labels() -> dict[str, str]:
        with db_sessions() as db:
            return labels_of(db, ["client-d1"])["client-d1"]

    assert labels() == {"site": "eu", "tier": "edge", "gpu": "true"}  # the token's win at enrolment
    with db_sessions() as db:
        sources = {key: source for key, source in db.execute(text("SELECT key, source FROM client_labels"))}
    assert sources == {"site": "enrolment", "tier": "enrolment", "gpu": "agent"}
    with db_sessions.begin() as db:
        set_labels(db, "client-d1", {"tier": "core"}, LabelSource.OPERATOR)
        db.get_one(ClientRow, "client-d1").state = S.CLIENT_STATE_ONLINE
    # Every reconnect registers again with the same config: two reads, nothing written.
    statements.reset()
    assert ok(registrar.commit([enrolment("d1", labels={"site": "us", "gpu": "true"}, credential=True)])[0])
    assert [sql.split()[0] for sql in statements.sql] == ["SELECT", "SELECT"]
    assert labels() == {"site": "eu", "tier": "core", "gpu": "true"}
    # Its config changes: what changed is applied, a key it dropped goes (it set it), the operator's stays.
    ok(registrar.commit([enrolment("d1", labels={"site": "fr"}, credential=True)])[0])
    assert labels() == {"site": "fr", "tier": "core"}
    # Offline after a restart: online again, with the reason.
    with db_sessions.begin() as db:
        db.get_one(ClientRow, "client-d1").state = S.CLIENT_STATE_OFFLINE
    ok(registrar.commit([enrolment("d1", labels={"site": "fr"}, credential=True)])[0])
    with db_sessions() as db:
        row = db.get_one(ClientRow, "client-d1")
        assert (row.state, row.state_reason, row.agent_labels) == (S.CLIENT_STATE_ONLINE, "registered", {"site": "fr"})


def test_registrations_that_arrive_together_are_committed_together(
        db_sessions: sessionmaker[Session], tokens: TokenStore, statements: Statements) -> None:
    """Through the database thread: 50 registrations at once are one transaction; a caller that gave up
    before its group started is dropped (its token stays unused)."""
    write = DatabaseWriter()
    registrar = Registrar(db_sessions, tokens, write)
    secrets = [token(tokens) for _ in range(51)]

    async def scenario() -> list[Any]:
        statements.reset()
        results = await asyncio.gather(*(registrar.register(enrolment(f"d{i}", secrets[i])) for i in range(50)),
                                       return_exceptions=True)
        assert statements.commits == 1
        gave_up = asyncio.ensure_future(registrar.register(enrolment("d50", secrets[50])))
        await asyncio.sleep(0)  # it is waiting for its group, which has not started
        gave_up.cancel()
        await asyncio.sleep(0.2)
        assert gave_up.cancelled() and statements.commits == 1  # its group was empty: no transaction
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        write.close()
    assert all(isinstance(result, Registered) for result in results)
    assert len(clients(db_sessions)) == 50 and "client-d50" not in clients(db_sessions)
    with db_sessions.kw["bind"].connect() as conn:
        row = enrolment_tokens.token_rows(conn, [secrets[50]])[secrets[50]]
        assert enrolment_tokens.enrolment_use(row, "client-x", utcnow()) is not None


def test_without_auth_a_device_registers_with_neither_token_nor_credential(
        registrar: Registrar, db_sessions: sessionmaker[Session]) -> None:
    plain = Registration(client_id="client-x", device={"device_id": "x"}, task_ids=("task-1",), secure=False)
    assert ok(registrar.commit([plain])[0]) == Registered("", ["task-1"])
    assert ok(registrar.commit([plain])[0]) == Registered("", ["task-1"])
    [unknown] = registrar.commit([Registration(client_id="client-y", device={}, task_ids=("nope",), secure=False)])
    assert isinstance(unknown, InvalidArgument) and clients(db_sessions) == ["client-x"]
