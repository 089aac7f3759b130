"""The control service on PostgreSQL (a real server on loopback): migrations, a run, a restart."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from fedops_control.devstack import LocalStack
from fedops_control.state.db import alembic_config
from tests.backends import Postgres
from tests.test_e2e import create_task, start_clients, wait_finished

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="fedops-pg-"))  # owned by the postgres user, outside pytest's tmp
    server = Postgres(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_run_on_postgresql_survives_a_restart(postgres: Postgres, tmp_path: Path, digits_data: list[Path]) -> None:
    from alembic.script import ScriptDirectory

    stack = LocalStack(tmp_path / "stack", database_url=postgres.url())
    try:
        stack.start_control()
        task_id = create_task(stack, rounds=1)
        start_clients(stack, task_id, digits_data[:2], "pg")
        run = stack.ctl_json("run", "start", task_id)
        finished = wait_finished(stack, run["id"])
        assert finished["outcome"] == "RUN_OUTCOME_COMPLETED", finished.get("reason")
        assert (tmp_path / "stack" / "control" / "control.db").exists() is False  # nothing went to SQLite
        # Restart the control service on the same database: the history is there.
        from fedops_common.proc import stop_process_group

        assert stack.control is not None
        stop_process_group(stack.control, grace_s=15)
        stack.start_control()
        again = stack.ctl_json("run", "show", run["id"])
        assert again["outcome"] == "RUN_OUTCOME_COMPLETED" and len(again["rounds"]) == 1
        assert [m["round"] for m in stack.ctl_json("models", "list", "--task", task_id)["models"]] == [1]
    finally:
        stack.stop()
    head = ScriptDirectory.from_config(alembic_config(postgres.url())).get_current_head()
    engine = sqlalchemy.create_engine(postgres.url())
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select version_num from alembic_version")).scalar() == head
        assert conn.execute(sqlalchemy.text("select count(*) from data_status")).scalar() >= 2
    engine.dispose()


def test_labels_selection_and_newest_first_paging_on_postgresql(postgres: Postgres) -> None:
    """Migration 0006 (the name backfill, the indexes, its downgrade) and the label queries on PostgreSQL:
    row-value keyset paging, the label filter, group sizes, a label selection."""
    import datetime as dt

    from alembic import command
    from sqlalchemy.orm import sessionmaker

    from fedops_common.proto import common_pb2
    from fedops_control.agents.sessions import AgentSessions
    from fedops_control.clients.labels import LabelSource, set_labels
    from fedops_control.clients.listing import count_groups, list_page
    from fedops_control.clients.selection import LabelSelection, candidates, choose
    from fedops_control.state.db import make_engine
    from tests.test_client_labels import T0, add_clients

    admin = sqlalchemy.create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text("create database labels"))
    admin.dispose()
    engine = make_engine(postgres.url("labels"))
    cfg = alembic_config(postgres.url("labels"))

    def migrate(to: str, down: bool = False) -> None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, to)

    migrate("0005")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "insert into clients (id, device, data_path, state, state_reason, current_run_id, registered_at, "
            "metrics_address, supernode_public_key) values ('old', '{}', '', 1, '', '', now(), '', '')"))
        conn.execute(sqlalchemy.text(
            "insert into credentials (id, kind, secret_sha256, name, role, subject, created_by, created_at, used_at, "
            "used_by) values ('t1', 2, 's1', 'lab-pc-7', 10, 'task-1', '', now(), now(), 'old')"))
    migrate("head")
    migrate("0005", down=True)
    migrate("head")
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as db:
        assert db.execute(sqlalchemy.text("select name from clients where id = 'old'")).scalar() == "lab-pc-7"
    ids = [f"client-{i:02d}" for i in range(9)]
    add_clients(sessions, ids)
    with sessions.begin() as db:
        db.execute(sqlalchemy.text("update clients set registered_at = :at where id in ('client-04', 'client-05')"),
                   {"at": T0 + dt.timedelta(seconds=4, microseconds=7)})  # a tie: the id decides
        for i, cid in enumerate(ids):
            set_labels(db, cid, {"site": "eu" if i % 3 else "us", "gpu": "true" if i % 2 else "false"},
                       LabelSource.AGENT)
    agents = AgentSessions()
    for cid in ids[:6]:
        agents.open(cid)
    listed, token = [], ""
    while True:
        with sessions() as db:
            rows, token, total = list_page(db, agents, "task-1", {"site": "eu"}, 0, 2, token)
        listed += [r.id for r in rows]
        if not token:
            break
    assert total == 6 and listed == ["client-08", "client-07", "client-05", "client-04", "client-02", "client-01"]
    with sessions() as db:
        groups = count_groups(db, agents, "task-1", {"site": "eu"}, "gpu")
        assert [(g.value, g.total) for g in groups.groups] == [("false", 3), ("true", 3)]
        assert {c.state for g in groups.groups for c in g.states} == {common_pb2.CLIENT_STATE_ONLINE,
                                                                     common_pb2.CLIENT_STATE_OFFLINE}
        wanted = LabelSelection({"site": "eu", "gpu": "true"}, 2)
        assert choose(candidates(db, agents, "task-1", wanted, busy=set()), wanted, "task-1") == ["client-01",
                                                                                                   "client-05"]
    engine.dispose()


def test_enrolment_group_commit_on_postgresql(postgres: Postgres) -> None:
    """The Register transaction on PostgreSQL, where four database threads commit groups at once: every
    enrolment of a storm lands once; a token two devices race for enrols one of them; a device whose
    retry races its own first enrolment ends up with one client; labels and memberships are written."""
    import asyncio

    from sqlalchemy.orm import sessionmaker

    from fedops_control.access.tokens import TokenStore
    from fedops_control.agents.enrolment import Registered, Registrar
    from fedops_control.clients.labels import labels_of
    from fedops_control.state.db import DatabaseWriter, make_engine, migrate
    from fedops_control.state.models import ClientRow, CredentialRow, MembershipRow, TaskRow
    from tests.test_enrolment import enrolment, token

    admin = sqlalchemy.create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text("create database enrolment"))
    admin.dispose()
    engine = make_engine(postgres.url("enrolment"))
    migrate(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as db:
        db.add(TaskRow(id="task-1", title="t", app={}, strategy={}))
    tokens = TokenStore(sessions)
    write = DatabaseWriter(threads=4)  # transactions in parallel: they race for the contested tokens
    registrar = Registrar(sessions, tokens, write)
    storm = [token(tokens, labels={"site": "eu"}) for _ in range(120)]
    contested = [token(tokens) for _ in range(20)]

    async def scenario() -> list[Registered | BaseException]:
        calls = [registrar.register(enrolment(f"d{i}", secret, labels={"gpu": "true"}))
                 for i, secret in enumerate(storm)]
        for i, secret in enumerate(contested):  # two devices race for each of these tokens
            calls += [registrar.register(enrolment(f"a{i}", secret)), registrar.register(enrolment(f"b{i}", secret))]
        calls += [registrar.register(enrolment("d0", storm[0], labels={"gpu": "true"}))]  # a retry, racing
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        results = asyncio.run(scenario())
    finally:
        write.close()
    assert all(isinstance(r, Registered) for r in results[:120]), [r for r in results[:120] if isinstance(r, Exception)]
    for i in range(20):
        a, b = results[120 + 2 * i], results[121 + 2 * i]
        assert isinstance(a, Registered) != isinstance(b, Registered), (a, b)  # exactly one of them
    assert isinstance(results[-1], Registered)
    with sessions() as db:
        ids = sorted(db.scalars(sqlalchemy.select(ClientRow.id)))
        assert len(ids) == 140 and len(set(ids)) == 140
        assert db.query(MembershipRow).count() == 140
        assert labels_of(db, ["client-d7"])["client-d7"] == {"site": "eu", "gpu": "true"}
        active = db.query(CredentialRow).filter(CredentialRow.kind == 3, CredentialRow.revoked_at.is_(None)).count()
        assert active == 140  # one usable credential per client (d0's retry revoked its first, if it had one)
    engine.dispose()
