"""Client labels and selection by label, without servers: the label syntax and selector text
(fedops_common/labels.py), who wins when the agent's config, an enrolment token and an operator set
a label (fedops_control/clients/labels.py), listing newest first with stable cursor paging and group
sizes (clients/listing.py), resolving a label selection (clients/selection.py), and the migration
that adds them (on a real SQLite file)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy.orm import Session, sessionmaker

from fedops_common import labels
from fedops_common.convert import utcnow
from fedops_common.proto import common_pb2, control_pb2
from fedops_control.agents.sessions import AgentSessions
from fedops_control.clients.labels import (
    LabelSource,
    apply_agent_labels,
    labels_of,
    matching,
    set_labels,
    validated,
    validated_keys,
)
from fedops_control.clients.listing import count_groups, list_page, page_token, parse_page_token
from fedops_control.clients.selection import (
    Candidate,
    LabelSelection,
    candidates,
    choose,
    selection_from_request,
)
from fedops_control.errors import FailedPrecondition, InvalidArgument
from fedops_control.state.db import alembic_config, make_engine, sqlite_url
from fedops_control.state.models import ClientRow, MembershipRow, TaskRow

S = common_pb2
T0 = dt.datetime(2026, 12, 1, 8, 0, 0)


# ---------------------------------------------------------------- syntax

@pytest.mark.parametrize("key", ["site", "gpu", "a", "Zone-1", "x_y.z", "example.com/site", "fedops.io/rack-7",
                                 "a" * 63, "k8s.example-1.org/" + "n" * 63])
def test_valid_keys(key: str) -> None:
    assert labels.key_problem(key) is None


@pytest.mark.parametrize("key", ["", "-site", "site-", "my site", "Site!", "a" * 64, "Example.com/site", "/site",
                                 "a/b/c", "x" * 254 + "/site", "site\n", "ü"])
def test_invalid_keys(key: str) -> None:
    assert labels.key_problem(key) is not None


@pytest.mark.parametrize("value", ["", "eu", "true", "EU-West_1.a", "v" * 63])
def test_valid_values(value: str) -> None:
    assert labels.value_problem(value) is None


@pytest.mark.parametrize("value", ["e u", "v" * 64, "eu\n", "-eu", "a,b", "x=y"])
def test_invalid_values(value: str) -> None:
    assert labels.value_problem(value) is not None


def test_selector_text() -> None:
    assert labels.parse_selector("site=eu, gpu=true") == {"site": "eu", "gpu": "true"}
    assert labels.parse_selector("") == {} and labels.parse_selector(" , ") == {}
    assert labels.parse_selector("tier=") == {"tier": ""}
    assert labels.format_selector({"site": "eu", "gpu": "true"}) == "gpu=true,site=eu"
    with pytest.raises(labels.LabelError, match="expected key=value"):
        labels.parse_selector("site")
    with pytest.raises(labels.LabelError, match="twice with different values"):
        labels.parse_selector("site=eu,site=us")
    with pytest.raises(labels.LabelError, match="invalid key 'Bad Key'"):
        labels.parse_selector("Bad Key=x")
    # Tools leave the syntax to the service (its message names the field); the shape is still theirs.
    assert labels.parse_selector("Bad Key=x", check=False) == {"Bad Key": "x"}
    assert labels.parse_pairs(["a=1", "a=2", "b=3"]) == {"a": "2", "b": "3"}


def test_the_service_names_the_field() -> None:
    assert validated("labels", {"site": "eu"}) == {"site": "eu"}
    with pytest.raises(InvalidArgument) as bad_key:
        validated("labels", {"Bad Key": "x"})
    assert bad_key.value.field == "labels" and "invalid key 'Bad Key'" in str(bad_key.value)
    with pytest.raises(InvalidArgument) as bad_value:
        validated("selection.labels.match_labels", {"site": "e u"})
    assert bad_value.value.field == "selection.labels.match_labels.site"
    with pytest.raises(InvalidArgument, match="at most 64 labels"):
        validated("labels", {f"k{i}": "v" for i in range(65)})
    with pytest.raises(InvalidArgument) as bad_remove:
        validated_keys("remove_keys", ["site", "no way"])
    assert bad_remove.value.field == "remove_keys"


def test_a_selection_in_a_request_is_typed_and_checked() -> None:
    by_labels = S.ClientSelection(labels=S.LabelSelection(match_labels={"site": "eu"}, count=500))
    assert selection_from_request([], by_labels) == LabelSelection({"site": "eu"}, 500)
    assert selection_from_request([], S.ClientSelection(ids=S.ClientIds(client_ids=["c1"]))) == ["c1"]
    assert selection_from_request(["c2"], None) == ["c2"]
    assert selection_from_request([], None) is None  # the task's default
    with pytest.raises(InvalidArgument) as both:
        selection_from_request(["c2"], by_labels)
    assert both.value.field == "selection"
    with pytest.raises(InvalidArgument) as negative:
        selection_from_request([], S.ClientSelection(labels=S.LabelSelection(count=-1)))
    assert negative.value.field == "selection.labels.count"
    with pytest.raises(InvalidArgument) as empty:
        selection_from_request([], S.ClientSelection(ids=S.ClientIds()))
    assert empty.value.field == "selection.ids.client_ids"


# ---------------------------------------------------------------- choosing

def test_choose_takes_the_least_recently_selected_free_clients() -> None:
    pool = [Candidate("c-a", True, T0 + dt.timedelta(hours=2)), Candidate("c-b", True, None),
            Candidate("c-c", True, T0), Candidate("c-d", False, None), Candidate("c-e", True, T0)]
    eu = LabelSelection({"site": "eu"}, 3)
    assert choose(pool, eu, "task-1") == ["c-b", "c-c", "c-e"]  # never selected, then oldest; ties by id
    assert choose(pool, LabelSelection({"site": "eu"}, 0), "task-1") == ["c-a", "c-b", "c-c", "c-e"]  # every free
    with pytest.raises(FailedPrecondition) as few:
        choose(pool, LabelSelection({"site": "eu", "gpu": "true"}, 5), "task-1")
    assert str(few.value) == ("label selection of task task-1 wants 5 clients labelled gpu=true,site=eu: "
                              "5 enrolled clients match, 4 of them online and in no other run")
    with pytest.raises(FailedPrecondition, match="0 enrolled clients match"):
        choose([], eu, "task-1")
    with pytest.raises(FailedPrecondition, match="1 enrolled client match, 0 of them online"):
        choose([Candidate("c-d", False, None)], LabelSelection({}, 0), "task-1")


# ---------------------------------------------------------------- in the database

def add_clients(db_sessions: sessionmaker[Session], ids: list[str], task_id: str = "task-1",
                start: dt.datetime = T0) -> None:
    with db_sessions.begin() as db:
        if db.get(TaskRow, task_id) is None:
            db.add(TaskRow(id=task_id, title="t", app={"local_path": "/x"}, strategy={}))
        for i, cid in enumerate(ids):
            db.add(ClientRow(id=cid, device={"device_id": cid}, state=S.CLIENT_STATE_ONLINE,
                             registered_at=start + dt.timedelta(seconds=i)))
        db.flush()
        for cid in ids:
            db.add(MembershipRow(task_id=task_id, client_id=cid, enrolled=True))


def label_map(db_sessions: sessionmaker[Session], cid: str) -> dict[str, str]:
    with db_sessions() as db:
        return labels_of(db, [cid])[cid]


def test_a_label_keeps_the_value_set_last_and_a_reconnect_changes_nothing(db_sessions: sessionmaker[Session]) -> None:
    add_clients(db_sessions, ["c1"])

    def register(config: dict[str, str]) -> None:  # what Register does with the agent's configured labels
        with db_sessions.begin() as db:
            apply_agent_labels(db, db.get_one(ClientRow, "c1"), config)

    register({"site": "us", "gpu": "true", "rack": "r1"})
    with db_sessions.begin() as db:  # the enrolment token's labels win at enrolment
        set_labels(db, "c1", {"tier": "edge"}, LabelSource.ENROLMENT)
    assert label_map(db_sessions, "c1") == {"site": "us", "gpu": "true", "rack": "r1", "tier": "edge"}
    with db_sessions.begin() as db:  # an operator relabels and removes one
        set_labels(db, "c1", {"site": "eu"}, LabelSource.OPERATOR, remove=["rack"])
    register({"site": "us", "gpu": "true", "rack": "r1"})  # the agent reconnects with the same config
    assert label_map(db_sessions, "c1") == {"site": "eu", "gpu": "true", "tier": "edge"}
    # Its config changes: what changed in it is set again (the newest word), the rest stays as it is.
    register({"site": "us", "gpu": "false", "rack": "r1"})
    assert label_map(db_sessions, "c1") == {"site": "eu", "gpu": "false", "tier": "edge"}
    register({"site": "fr", "gpu": "false", "rack": "r1"})
    assert label_map(db_sessions, "c1") == {"site": "fr", "gpu": "false", "tier": "edge"}
    # A key the config drops goes only if the agent set it last.
    with db_sessions.begin() as db:
        set_labels(db, "c1", {"gpu": "true"}, LabelSource.OPERATOR)
    register({"site": "fr"})
    assert label_map(db_sessions, "c1") == {"site": "fr", "gpu": "true", "tier": "edge"}
    register({})
    assert label_map(db_sessions, "c1") == {"gpu": "true", "tier": "edge"}


def test_matching_needs_every_label(db_sessions: sessionmaker[Session]) -> None:
    add_clients(db_sessions, ["c1", "c2", "c3", "c4"])
    with db_sessions.begin() as db:
        set_labels(db, "c1", {"site": "eu", "gpu": "true"}, LabelSource.AGENT)
        set_labels(db, "c2", {"site": "eu", "gpu": "false"}, LabelSource.AGENT)
        set_labels(db, "c3", {"site": "us", "gpu": "true"}, LabelSource.AGENT)
        set_labels(db, "c4", {"site": "eu", "gpu": "true", "tier": "edge"}, LabelSource.OPERATOR)
    with db_sessions() as db:
        def ids(selector: dict[str, str]) -> list[str]:
            return sorted(r.id for r in db.query(ClientRow).filter(matching(selector)))

        assert ids({"site": "eu", "gpu": "true"}) == ["c1", "c4"]
        assert ids({"site": "eu"}) == ["c1", "c2", "c4"]
        assert ids({"tier": "edge", "site": "us"}) == []
        assert ids({"gpu": "true"}) == ["c1", "c3", "c4"]


def test_a_label_selection_resolves_to_free_enrolled_clients(db_sessions: sessionmaker[Session]) -> None:
    add_clients(db_sessions, ["c1", "c2", "c3", "c4"])
    add_clients(db_sessions, ["other"], task_id="task-2")
    with db_sessions.begin() as db:
        for cid in ("c1", "c2", "c3", "c4", "other"):
            set_labels(db, cid, {"site": "eu"}, LabelSource.AGENT)
        db.get_one(ClientRow, "c1").last_selected_at = T0
    agents = AgentSessions()
    for cid in ("c1", "c2", "c4", "other"):
        agents.open(cid)
    with db_sessions() as db:
        found = candidates(db, agents, "task-1", LabelSelection({"site": "eu"}, 2), busy={"c4"})
        assert sorted((c.client_id, c.free) for c in found) == [("c1", True), ("c2", True), ("c3", False),
                                                                ("c4", False)]
        assert choose(found, LabelSelection({"site": "eu"}, 2), "task-1") == ["c1", "c2"]
        assert choose(found, LabelSelection({"site": "eu"}, 1), "task-1") == ["c2"]  # c1 ran more recently
        with pytest.raises(FailedPrecondition, match="4 enrolled clients match, 2 of them online"):
            choose(found, LabelSelection({"site": "eu"}, 3), "task-1")


def test_clients_are_listed_newest_first_and_paging_is_stable_while_clients_join(
        db_sessions: sessionmaker[Session]) -> None:
    ids = [f"client-{i:03d}" for i in range(25)]
    add_clients(db_sessions, ids)
    with db_sessions.begin() as db:  # two clients registered in the same microsecond: the id breaks the tie
        db.get_one(ClientRow, "client-010").registered_at = db.get_one(ClientRow, "client-011").registered_at
        for cid in ids[::2]:
            set_labels(db, cid, {"site": "eu"}, LabelSource.AGENT)
    agents = AgentSessions()
    for cid in ids[:12]:
        agents.open(cid)
    newest_first = sorted(ids, key=lambda c: (int(c[-3:]) if c != "client-010" else 11, c), reverse=True)

    def pages(size: int, between: Any = None, **filters: Any) -> list[str]:
        listed, token = [], ""
        while True:
            with db_sessions() as db:
                rows, token, total = list_page(db, agents, filters.get("task_id", ""), filters.get("labels", {}),
                                               filters.get("state", 0), size, token)
            assert len(rows) <= size
            listed += [r.id for r in rows]
            if not token:
                return listed
            if between:
                between()

    assert pages(7) == newest_first
    joined = iter(range(100, 200))

    def join() -> None:  # a newer client registers between two pages
        n = next(joined)
        add_clients(db_sessions, [f"client-{n}"], task_id="task-3", start=T0 + dt.timedelta(hours=1, seconds=n))

    assert pages(4, join) == newest_first  # every client once, none of the joiners (newer than the first page)
    assert pages(3, state=S.CLIENT_STATE_OFFLINE, task_id="task-1") == [c for c in newest_first if c not in ids[:12]]
    assert pages(2, labels={"site": "eu"}, state=S.CLIENT_STATE_ONLINE) == [
        c for c in newest_first if c in ids[:12:2]]
    assert pages(100, task_id="task-3") == [f"client-{n}" for n in range(105, 99, -1)]  # 7 pages, 6 joiners
    with db_sessions() as db:
        row = db.get_one(ClientRow, "client-011")
        assert parse_page_token(page_token(row)) == (row.registered_at, "client-011")
    for bad in ("client-001", "12:", "x:client-1", "9" * 19 + ":c", "1:" + "c" * 65, "1:c\n"):
        with pytest.raises(InvalidArgument) as refused:
            parse_page_token(bad)
        assert refused.value.field == "page_token"


def test_group_sizes_by_label_value_and_state(db_sessions: sessionmaker[Session]) -> None:
    add_clients(db_sessions, [f"c{i}" for i in range(7)])
    with db_sessions.begin() as db:
        for i in range(7):
            set_labels(db, f"c{i}", {"site": "eu" if i < 4 else "us"} if i < 6 else {}, LabelSource.AGENT)
            set_labels(db, f"c{i}", {"gpu": "true"} if i % 2 else {}, LabelSource.AGENT)
        db.get_one(ClientRow, "c1").state = S.CLIENT_STATE_TRAINING
        db.get_one(ClientRow, "c2").state = S.CLIENT_STATE_FAILED
    agents = AgentSessions()
    for cid in ("c0", "c1", "c4"):
        agents.open(cid)

    def groups(response: control_pb2.CountClientsResponse) -> list[tuple[str, bool, dict[str, int], int]]:
        return [(g.value, g.unlabelled, {S.ClientState.Name(c.state)[13:].lower(): c.count for c in g.states},
                 g.total) for g in response.groups]

    with db_sessions() as db:
        by_site = count_groups(db, agents, "", {}, "site")
        assert by_site.total == 7 and by_site.groups_left_out == 0
        assert groups(by_site) == [("eu", False, {"online": 1, "training": 1, "failed": 1, "offline": 1}, 4),
                                   ("us", False, {"online": 1, "offline": 1}, 2),
                                   ("", True, {"offline": 1}, 1)]
        assert groups(count_groups(db, agents, "task-1", {"gpu": "true"}, "site")) == [
            ("eu", False, {"training": 1, "offline": 1}, 2), ("us", False, {"offline": 1}, 1)]
        assert groups(count_groups(db, agents, "", {"site": "us"}, "")) == [
            ("", False, {"online": 1, "offline": 1}, 2)]


# ---------------------------------------------------------------- the migration

def test_migration_0006_names_clients_after_their_enrolment_token_and_indexes_labels(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    engine = make_engine(sqlite_url(path))
    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
    now = utcnow().isoformat(sep=" ")
    with sqlite3.connect(path) as conn:
        conn.execute("insert into clients (id, device, data_path, state, state_reason, current_run_id, registered_at,"
                     " metrics_address, supernode_public_key) values ('client-a', '{}', '', 1, '', '', ?, '', '')",
                     (now,))
        for token_id, name, used_at in (("t-unnamed", "", "2026-01-01 00:00:00"), ("t-lab", "lab-pc-7",
                                                                                   "2026-01-02 00:00:00")):
            conn.execute("insert into credentials (id, kind, secret_sha256, name, role, subject, created_by, "
                         "created_at, used_at, used_by) values (?, 2, ?, ?, 10, 'task-1', '', ?, ?, 'client-a')",
                         (token_id, token_id, name, now, used_at))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with sqlite3.connect(path) as conn:
        assert conn.execute("select name, agent_labels from clients").fetchall() == [("lab-pc-7", "{}")]
        indexes = {row[1] for row in conn.execute("pragma index_list('client_labels')")}
        assert "ix_client_labels_key_value" in indexes
        assert "ix_clients_registered_at_id" in {row[1] for row in conn.execute("pragma index_list('clients')")}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    with sqlite3.connect(path) as conn:
        assert "client_labels" not in {row[0] for row in conn.execute("select name from sqlite_master")}
    engine.dispose()


def test_reading_clients_leaves_no_cyclic_garbage(db_sessions: sessionmaker[Session]) -> None:
    """GetClient and a page of clients read memberships, labels and data status with statements built
    once: a statement built per call left ~30 objects of cyclic garbage each for the collector to free
    (at 10,000 agents most of what each young collection freed; bench/README.md, issue 17)."""
    import gc

    from fedops_control.server.convert import clients_to_proto

    with db_sessions.begin() as db:
        db.add(TaskRow(id="t", title="t", app={}, strategy={}))
        db.flush()
        for i in range(5):
            db.add(ClientRow(id=f"g{i}", device={"hostname": "h"}, state=1))
            db.flush()
            db.add(MembershipRow(task_id="t", client_id=f"g{i}", enrolled=True))
    agents = AgentSessions()

    def read() -> list[common_pb2.Client]:
        with db_sessions() as db:
            return clients_to_proto(db, db.query(ClientRow).order_by(ClientRow.id).all(), agents)

    assert [c.enrolled_task_ids for c in read()] == [["t"]] * 5
    for _ in range(5):
        read()  # SQLAlchemy's caches filled
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            read()
        gc.collect()
        leftovers = sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert "BindParameter" not in leftovers, leftovers
