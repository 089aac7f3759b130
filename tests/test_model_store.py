"""Unit tests of the model registry (fedops_control/registry/store.py): versions, lineage, latest/best."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.proto import common_pb2
from fedops_control.errors import InvalidArgument, NotFound
from fedops_control.registry.store import ModelStore, client_means
from fedops_control.state.models import ClientResultRow, RoundRow, RunRow, TaskRow
from fedops_control.task.strategy import StrategySpec

S = common_pb2


@pytest.fixture
def sessions(db_sessions: sessionmaker[Session]) -> Iterator[sessionmaker[Session]]:
    factory = db_sessions
    with factory.begin() as db:
        for task_id in ("task-1", "task-2"):
            db.add(TaskRow(id=task_id, title=task_id, app={"local_path": "/nowhere"}, strategy={}))
        db.flush()
        for run_id, task_id in (("run-1", "task-1"), ("run-2", "task-1"), ("run-3", "task-2")):
            db.add(RunRow(id=run_id, task_id=task_id, state=S.RUN_STATE_RUNNING, config_hash=f"hash-{run_id}"))
    yield factory


@pytest.fixture
def store(sessions: sessionmaker[Session], tmp_path: Path) -> ModelStore:
    return ModelStore(sessions, tmp_path / "models")


def add_round(sessions: sessionmaker[Session], run_id: str, number: int, responded: list[str] = (),
              train: dict[str, Any] | None = None, evaluate: dict[str, Any] | None = None,
              results: list[tuple[str, str, dict[str, Any], str]] = ()) -> None:
    """A round row and its client results (client, phase, metrics, error)."""
    with sessions.begin() as db:
        db.add(RoundRow(run_id=run_id, number=number, selected=list(responded), responded=list(responded), failed=[],
                        train_metrics=train or {}, evaluate_metrics=evaluate or {}, central_metrics={}))
        for client_id, phase, metrics, error in results:
            db.add(ClientResultRow(run_id=run_id, round=number, phase=phase, client_id=client_id, metrics=metrics,
                                   error=error))


def test_versions_increase_per_task(store: ModelStore) -> None:
    a = store.add("run-1", 1, b"a", {}, "npz")
    b = store.add("run-3", 1, b"b", {}, "npz")   # another task: its own numbering
    c = store.add("run-2", 1, b"c", {}, "npz")   # another run of task-1: continues task-1's numbering
    d = store.add("run-1", 2, b"d", {}, "npz")
    assert [a.version, b.version, c.version, d.version] == [1, 1, 2, 3]
    assert [m.version for m in store.list(task_id="task-1")] == [3, 2, 1]   # newest first
    assert [m.id for m in store.list(run_id="run-3")] == [b.id]


def test_add_writes_the_file_and_its_digest(store: ModelStore, sessions: sessionmaker[Session]) -> None:
    add_round(sessions, "run-1", 1, responded=["client-a", "client-b"])
    row = store.add("run-1", 1, b"weights", {"accuracy": 0.5}, "pt")
    assert Path(row.path).parent == store.root / "task-1"
    assert Path(row.path).suffix == ".pt"
    assert ModelStore.read(row) == b"weights"
    assert row.sha256 == hashlib.sha256(b"weights").hexdigest()
    assert row.size_bytes == 7 and row.format == "pt"
    assert row.participants == ["client-a", "client-b"]
    assert row.config_hash == "hash-run-1"
    with sessions() as db:
        round_row = db.get(RoundRow, ("run-1", 1))
        assert round_row.model_version_id == row.id
        assert round_row.central_metrics == {"accuracy": 0.5}


def test_add_to_an_unknown_run_is_not_found(store: ModelStore) -> None:
    with pytest.raises(NotFound):
        store.add("no-such-run", 1, b"x", {}, "npz")
    assert store.list() == []


def test_lineage_parent_is_the_runs_previous_round(store: ModelStore) -> None:
    first = store.add("run-1", 1, b"1", {}, "npz")
    other = store.add("run-3", 1, b"x", {}, "npz")
    second = store.add("run-1", 2, b"2", {}, "npz")
    third = store.add("run-1", 3, b"3", {}, "npz")
    assert first.parent_id == ""
    assert second.parent_id == first.id
    assert third.parent_id == second.id
    assert other.parent_id == ""  # another run's versions are not parents


def test_lineage_of_a_resumed_run_starts_at_the_resumed_model(store: ModelStore,
                                                             sessions: sessionmaker[Session]) -> None:
    base = store.add("run-1", 1, b"1", {}, "npz")
    with sessions.begin() as db:
        db.get(RunRow, "run-2").resumed_from_model_id = base.id
    resumed = store.add("run-2", 1, b"r1", {}, "npz")
    next_ = store.add("run-2", 2, b"r2", {}, "npz")
    assert resumed.parent_id == base.id
    assert next_.parent_id == resumed.id  # afterwards: the run's own previous round


def test_metrics_are_prefixed_and_client_means_exclude_failed_clients(store: ModelStore,
                                                                      sessions: sessionmaker[Session]) -> None:
    add_round(sessions, "run-1", 1, responded=["a", "b"], train={"loss": 0.4}, evaluate={"accuracy": 0.7},
              results=[("a", "evaluate", {"accuracy": 0.6, "hist": [1.0, 2.0]}, ""),
                       ("b", "evaluate", {"accuracy": 0.8}, ""),
                       ("c", "evaluate", {"accuracy": 0.0}, "ValueError: boom"),
                       ("a", "train", {"loss": 0.5}, "")])
    row = store.add("run-1", 1, b"x", {"accuracy": 0.9, "loss": 0.1}, "npz")
    assert row.metrics == pytest.approx({
        "central.accuracy": 0.9, "central.loss": 0.1, "train.loss": 0.4, "evaluate.accuracy": 0.7,
        "client.evaluate.accuracy": 0.7, "client.train.loss": 0.5})


def test_client_means_only_scalars() -> None:
    rows = [ClientResultRow(phase="train", metrics={"x": 1.0, "l": [1.0, 2.0]}, error=""),
            ClientResultRow(phase="train", metrics={"x": 3.0}, error=""),
            ClientResultRow(phase="train", metrics={"x": 100.0}, error="E: failed")]
    assert client_means(rows) == {"client.train.x": 2.0}


def test_latest_and_best_higher_is_better(store: ModelStore) -> None:
    v1 = store.add("run-1", 1, b"1", {"accuracy": 0.5, "loss": 0.9}, "npz")
    v2 = store.add("run-1", 2, b"2", {"accuracy": 0.9, "loss": 0.4}, "npz")
    v3 = store.add("run-1", 3, b"3", {"accuracy": 0.7, "loss": 0.2}, "npz")
    store.add("run-3", 1, b"other task", {"accuracy": 1.0}, "npz")
    assert store.resolve("latest", "task-1").id == v3.id
    spec = StrategySpec()  # central.accuracy, higher is better
    assert store.resolve("best", "task-1", spec).id == v2.id
    assert store.resolve("best", "task-1").id == v2.id  # no strategy: the default one
    assert store.tags_for(v3, spec) == ["latest"]
    assert store.tags_for(v2, spec) == ["best"]
    assert store.tags_for(v1, spec) == []


def test_best_lower_is_better_for_loss(store: ModelStore) -> None:
    store.add("run-1", 1, b"1", {"loss": 0.9}, "npz")
    v2 = store.add("run-1", 2, b"2", {"loss": 0.2}, "npz")
    v3 = store.add("run-1", 3, b"3", {"loss": 0.4}, "npz")
    spec = StrategySpec.from_proto(S.StrategySettings(best_metric="central.loss"))
    assert spec.best_metric_lower_is_better
    assert store.resolve("best", "task-1", spec).id == v2.id
    assert store.tags_for(v2, spec) == ["best"]
    assert store.tags_for(v3, spec) == ["latest"]
    # told otherwise explicitly, the highest loss wins
    higher = StrategySpec.from_proto(S.StrategySettings(best_metric="central.loss", best_metric_lower_is_better=False))
    assert store.resolve("best", "task-1", higher).version == 1


def test_best_by_client_mean(store: ModelStore, sessions: sessionmaker[Session]) -> None:
    add_round(sessions, "run-1", 1, results=[("a", "evaluate", {"accuracy": 0.9}, ""),
                                             ("b", "evaluate", {"accuracy": 0.7}, "")])
    add_round(sessions, "run-1", 2, results=[("a", "evaluate", {"accuracy": 0.6}, ""),
                                             ("b", "evaluate", {"accuracy": 0.99}, "RuntimeError: nan")])
    v1 = store.add("run-1", 1, b"1", {"accuracy": 0.1}, "npz")
    v2 = store.add("run-1", 2, b"2", {"accuracy": 0.2}, "npz")
    spec = StrategySpec(best_metric="client.evaluate.accuracy")
    assert v1.metrics["client.evaluate.accuracy"] == pytest.approx(0.8)
    assert v2.metrics["client.evaluate.accuracy"] == pytest.approx(0.6)  # the failed client's value is left out
    assert store.resolve("best", "task-1", spec).id == v1.id
    assert store.tags_for(v1, spec) == ["best"]
    assert store.tags_for(v2, spec) == ["latest"]


def test_best_skips_versions_without_the_metric_and_falls_back_to_latest(store: ModelStore) -> None:
    v1 = store.add("run-1", 1, b"1", {"accuracy": 0.3}, "npz")
    v2 = store.add("run-1", 2, b"2", {}, "npz")
    assert store.resolve("best", "task-1", StrategySpec()).id == v1.id
    assert store.resolve("best", "task-1", StrategySpec(best_metric="central.f1")).id == v2.id
    assert store.tags_for(v2, StrategySpec(best_metric="central.f1")) == ["latest", "best"]


def test_best_ignores_list_metrics(store: ModelStore) -> None:
    v1 = store.add("run-1", 1, b"1", {"accuracy": 0.3}, "npz")
    store.add("run-1", 2, b"2", {"accuracy": [0.9, 0.9]}, "npz")
    assert store.resolve("best", "task-1", StrategySpec()).id == v1.id


def test_resolve_errors(store: ModelStore) -> None:
    with pytest.raises(InvalidArgument) as err:
        store.resolve("latest")
    assert err.value.field == "task_id"
    with pytest.raises(InvalidArgument):
        store.resolve("best", "", StrategySpec())
    with pytest.raises(NotFound):
        store.resolve("latest", "task-1")  # no models yet
    with pytest.raises(NotFound):
        store.resolve("model-doesnotexist")
    row = store.add("run-1", 1, b"1", {}, "npz")
    assert store.resolve(row.id).id == row.id
    assert store.resolve(row.id, "task-2").id == row.id  # an explicit id ignores the task


def test_best_on_a_tie_is_the_newest_version_in_both_directions(store: ModelStore) -> None:
    """Two versions with the same loss and accuracy: "best" is the newer, lower- or higher-is-better."""
    first = store.add("run-1", 1, b"one", {"loss": 0.5, "accuracy": 0.8}, "npz")
    second = store.add("run-1", 2, b"two", {"loss": 0.5, "accuracy": 0.8}, "npz")
    assert first.version < second.version
    lower = StrategySpec(best_metric="central.loss", best_metric_lower_is_better=True)
    higher = StrategySpec(best_metric="central.accuracy")
    assert store.resolve("best", "task-1", lower).id == second.id
    assert store.resolve("best", "task-1", higher).id == second.id


def test_participants_are_the_clients_whose_training_went_into_the_model(store: ModelStore,
                                                                        sessions: sessionmaker[Session]) -> None:
    """client-b failed train but answered evaluate: it replied in the round, yet is no participant."""
    add_round(sessions, "run-1", 1, responded=["client-a", "client-b"],
              results=[("client-a", "train", {"loss": 0.4}, ""), ("client-b", "train", {}, "ValueError: boom"),
                       ("client-a", "evaluate", {"accuracy": 0.8}, ""),
                       ("client-b", "evaluate", {"accuracy": 0.7}, "")])
    assert store.add("run-1", 1, b"w", {}, "npz").participants == ["client-a"]
