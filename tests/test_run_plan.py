"""Unit tests of a run's plan (fedops_control/run/plan.py): rendered configs, config hash, round count."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fedops_common.proto import common_pb2
from fedops_common.strategy_settings import DEFAULT_RUN_CONFIG_KEYS
from fedops_control.errors import InvalidArgument
from fedops_control.run.plan import RunPlan, TaskInputs, check_overrides, plan_run
from fedops_control.task.strategy import StrategySpec

CLIENTS = ["client-a", "client-b", "client-c"]
PATHS = {"client-a": "/data/a", "client-b": "/data/b", "client-c": "/data/c"}


def task(**changes: Any) -> TaskInputs:
    base = TaskInputs(
        task_id="task-1", title="Digits",
        app={"local_path": "/apps/digits"},
        strategy=StrategySpec(rounds=4, min_clients=2),
        hyperparameters={"learning-rate": 0.05, "batch-size": 32, "tag": "run ${run.id} of ${task.title}"},
        client_config={"data-path": "${client.data_path}", "partition-id": "${client.index}",
                       "name": "${client.id}-${client.index}", "num-partitions": "${run.client_count}"},
    )
    return dataclasses.replace(base, **changes)


def plan(inputs: TaskInputs | None = None, run_id: str = "run-1", clients: list[str] = CLIENTS,
         overrides: dict[str, Any] | None = None, paths: dict[str, str] = PATHS) -> RunPlan:
    return plan_run(run_id, inputs or task(), list(clients), dict(paths), dict(overrides or {}))


def test_run_config_has_task_values_rendered_and_strategy_keys() -> None:
    p = plan()
    assert p.run_id == "run-1" and p.client_ids == CLIENTS
    assert p.run_config == {
        "learning-rate": 0.05, "batch-size": 32, "tag": "run run-1 of Digits",
        "num-server-rounds": 4, "fraction-train": 1.0, "fraction-evaluate": 1.0, "min-nodes": 2,
        "round-timeout": 300.0,
    }


def test_overrides_win_over_task_values() -> None:
    p = plan(overrides={"learning-rate": 0.5, "extra": "${hp.batch-size}"})
    assert p.run_config["learning-rate"] == 0.5
    assert p.run_config["batch-size"] == 32
    assert p.run_config["extra"] == 32  # a whole-value template keeps the type


def test_strategy_keys_are_filled_only_when_absent() -> None:
    inputs = task(hyperparameters={"num-server-rounds": 10, "min-nodes": "${strategy.min_clients}"})
    p = plan(inputs, overrides={"fraction-train": 0.25})
    assert p.run_config["num-server-rounds"] == 10   # the task's own value stays
    assert p.run_config["min-nodes"] == 2            # rendered from the strategy
    assert p.run_config["fraction-train"] == 0.25    # the override stays
    assert p.run_config["fraction-evaluate"] == 1.0  # absent: filled from the strategy


def test_strategy_settings_without_a_key_are_not_passed() -> None:
    keys = {**DEFAULT_RUN_CONFIG_KEYS, "fraction_train": "", "round_timeout_s": "", "rounds": "server-rounds"}
    p = plan(task(strategy=StrategySpec(rounds=6, run_config_keys=keys)))
    assert "fraction-train" not in p.run_config
    assert "round-timeout" not in p.run_config
    assert "num-server-rounds" not in p.run_config
    assert p.run_config["server-rounds"] == 6
    assert p.app_decides == ["fraction_train"]


def test_node_configs_per_client() -> None:
    p = plan()
    assert p.node_configs == {
        "client-a": {"data-path": "/data/a", "partition-id": 0, "name": "client-a-0", "num-partitions": 3},
        "client-b": {"data-path": "/data/b", "partition-id": 1, "name": "client-b-1", "num-partitions": 3},
        "client-c": {"data-path": "/data/c", "partition-id": 2, "name": "client-c-2", "num-partitions": 3},
    }
    assert isinstance(p.node_configs["client-b"]["partition-id"], int)


def test_client_index_follows_the_order_of_the_selected_clients() -> None:
    p = plan(clients=["client-c", "client-a"])
    assert p.node_configs["client-c"]["partition-id"] == 0
    assert p.node_configs["client-a"]["partition-id"] == 1
    assert set(p.node_configs) == {"client-c", "client-a"}


def test_fedml_aliases_render() -> None:
    inputs = task(hyperparameters={"clients": "${FEDSYS.CLIENT_NUM}", "ids": "${FEDSYS.CLIENT_ID_LIST}"},
                  client_config={"data": "${FEDSYS.PRIVATE_LOCAL_DATA}"})
    p = plan(inputs)
    assert p.run_config["clients"] == 3 and p.run_config["ids"] == "client-a,client-b,client-c"
    assert p.node_configs["client-b"] == {"data": "/data/b"}


def test_config_hash_is_stable() -> None:
    first, second = plan(), plan()
    assert first.config_hash == second.config_hash
    assert len(first.config_hash) == 64
    # the run id is identity, not configuration (unless a value renders it)
    untagged = task(hyperparameters={"learning-rate": 0.05})
    assert plan(untagged, run_id="run-1").config_hash == plan(untagged, run_id="run-2").config_hash
    # dict order does not matter
    reordered = task(hyperparameters=dict(reversed(list(task().hyperparameters.items()))))
    assert plan(reordered).config_hash == first.config_hash


@pytest.mark.parametrize("change", [
    lambda: plan(overrides={"learning-rate": 0.06}),
    lambda: plan(run_id="run-2"),                                   # ${run.id} is rendered into "tag"
    lambda: plan(clients=["client-a", "client-b"]),
    lambda: plan(clients=["client-b", "client-a", "client-c"]),     # other partition ids
    lambda: plan(paths={**PATHS, "client-c": "/data/other"}),
    lambda: plan(task(app={"local_path": "/apps/other"})),
    lambda: plan(task(strategy=StrategySpec(rounds=4, min_clients=2, round_timeout_s=30))),
    lambda: plan(task(strategy=StrategySpec(rounds=4, min_clients=2, best_metric="central.loss"))),
    lambda: plan(task(client_config={"data-path": "${client.data_path}"})),
])
def test_config_hash_changes_with_the_configuration(change) -> None:
    assert change().config_hash != plan().config_hash


def test_total_rounds_zero_when_the_app_decides_rounds() -> None:
    keys = {**DEFAULT_RUN_CONFIG_KEYS, "rounds": ""}
    p = plan(task(strategy=StrategySpec(rounds=4, run_config_keys=keys)))
    assert p.total_rounds == 0
    assert p.app_decides == ["rounds"]
    assert plan().total_rounds == 4
    assert plan().app_decides == []


def test_rendering_errors_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(task(hyperparameters={"a": "${hp.b}", "b": "${hp.a}"}))
    assert "circular" in err.value.message


# ---------------------------------------------------------------- check_overrides

def test_check_overrides_accepts_plain_values_and_known_templates() -> None:
    hp = {"learning-rate": 0.1}
    check_overrides({}, hp)
    check_overrides({"learning-rate": 0.2, "flag": True, "name": "x"}, hp)
    check_overrides({"lr2": "${hp.learning-rate}", "run": "${run.id}", "rounds": "${strategy.rounds}"}, hp)
    check_overrides({"a": 1, "b": "${hp.a}"}, hp)  # another override is a known value too


@pytest.mark.parametrize("overrides", [
    {"bad key": 1},
    {"": 1},
    {"9starts-with-digit": 1},
    {"nested": {"a": 1}},
    {"listed": [1, 2]},
    {"none": None},
    {"unknown": "${hp.nope}"},
    {"per-client": "${client.index}"},   # per client: only in client_config
    {"typo": "${run.idd}"},
])
def test_check_overrides_refuses(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_overrides(overrides, {"learning-rate": 0.1})
    assert err.value.field == f"hyperparameter_overrides.{next(iter(overrides))}"


def test_the_lifecycle_allows_only_forward_changes_and_keeps_a_stopped_run_stopped() -> None:
    from fedops_control.errors import FailedPrecondition
    from fedops_control.run.lifecycle import check_transition
    from fedops_control.state.models import RunRow

    S = common_pb2
    check_transition(RunRow(id="run-a", state=S.RUN_STATE_PENDING), S.RUN_STATE_STARTING)
    check_transition(RunRow(id="run-a", state=S.RUN_STATE_STARTING), S.RUN_STATE_RUNNING)
    check_transition(RunRow(id="run-a", state=S.RUN_STATE_RUNNING), S.RUN_STATE_FINISHED)
    with pytest.raises(FailedPrecondition, match="was stopped while starting"):
        check_transition(RunRow(id="run-a", state=S.RUN_STATE_FINISHED), S.RUN_STATE_RUNNING)
    with pytest.raises(FailedPrecondition, match="cannot go from running to starting"):
        check_transition(RunRow(id="run-a", state=S.RUN_STATE_RUNNING), S.RUN_STATE_STARTING)


def test_an_override_value_is_bounded_like_a_task_value() -> None:
    check_overrides({"note": "x" * 4096}, {})
    with pytest.raises(InvalidArgument, match="hyperparameter_overrides.note"):
        check_overrides({"note": "x" * 4097}, {})
