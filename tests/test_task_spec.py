"""Unit tests of task validation (field names in errors)."""

import pytest

from fedops_common.convert import dict_to_struct
from fedops_common.proto import common_pb2
from fedops_control.errors import InvalidArgument
from fedops_control.task.spec import task_from_proto
from tests.conftest import DIGITS_APP


def make(**overrides):
    task = common_pb2.Task(title="t", app=common_pb2.AppReference(local_path=str(DIGITS_APP)),
                           strategy=common_pb2.StrategySettings(rounds=3, min_clients=2))
    for key, value in overrides.items():
        if key == "hyperparameters":
            task.hyperparameters.CopyFrom(dict_to_struct(value))
        elif key == "strategy":
            task.strategy.CopyFrom(value)
        elif key == "app":
            task.app.CopyFrom(value)
        else:
            setattr(task, key, value)
    return task


def test_valid_task_gets_defaults() -> None:
    spec = task_from_proto(make(hyperparameters={"learning-rate": 0.05}))
    assert spec["strategy"]["round_timeout_s"] == 300.0
    assert spec["strategy"]["run_config_keys"]["rounds"] == "num-server-rounds"
    assert spec["hyperparameters"] == {"learning-rate": 0.05}


@pytest.mark.parametrize("overrides, field", [
    ({"title": "  "}, "title"),
    ({"strategy": common_pb2.StrategySettings(rounds=-1)}, "strategy.rounds"),
    ({"strategy": common_pb2.StrategySettings(fraction_train=1.5)}, "strategy.fraction_train"),
    ({"strategy": common_pb2.StrategySettings(round_timeout_s=-3)}, "strategy.round_timeout_s"),
    ({"app": common_pb2.AppReference(local_path="/does/not/exist")}, "app.local_path"),
    ({"app": common_pb2.AppReference(git=common_pb2.GitSource(url="not a url"))}, "app.git.url"),
    ({"hyperparameters": {"no-such-key": 1}}, "hyperparameters.no-such-key"),
    ({"hyperparameters": {"learning-rate": "${bogus}"}}, "hyperparameters.learning-rate"),
])
def test_invalid_task_names_the_field(overrides, field) -> None:
    with pytest.raises(InvalidArgument) as err:
        task_from_proto(make(**overrides))
    assert err.value.field == field
