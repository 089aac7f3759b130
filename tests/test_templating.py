"""Unit tests of ${...} templating."""

import pytest

from fedops_control.errors import InvalidArgument
from fedops_control.task.templating import (
    check_template,
    render_client_config,
    render_hyperparameters,
)

VARS = {"run.id": "run-1", "run.client_count": 3, "run.client_ids": "a,b,c", "task.id": "t", "task.title": "T",
        "strategy.rounds": 5}


def test_whole_value_keeps_type_and_interpolation_makes_strings() -> None:
    out = render_hyperparameters({"n": "${run.client_count}", "tag": "run=${run.id}/${strategy.rounds}"}, VARS)
    assert out == {"n": 3, "tag": "run=run-1/5"}


def test_fedml_aliases_resolve() -> None:
    out = render_hyperparameters({"n": "${FEDSYS.CLIENT_NUM}", "ids": "${FEDSYS_CLIENT_ID_LIST}"}, VARS)
    assert out == {"n": 3, "ids": "a,b,c"}


def test_hp_references_chain_and_cycles_are_refused() -> None:
    assert render_hyperparameters({"a": "${hp.b}", "b": "${hp.c}", "c": 7}, VARS) == {"a": 7, "b": 7, "c": 7}
    with pytest.raises(InvalidArgument) as err:
        render_hyperparameters({"a": "${hp.b}", "b": "${hp.a}"}, VARS)
    assert err.value.field.startswith("hyperparameters.")


def test_client_variables_only_in_client_config() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_template("hyperparameters.path", "${client.data_path}", set(), allow_client=False)
    assert err.value.field == "hyperparameters.path"
    check_template("client_config.path", "${client.data_path}", set(), allow_client=True)
    out = render_client_config({"data-path": "${FEDSYS.PRIVATE_LOCAL_DATA}", "i": "${client.index}"},
                               {**VARS, "client.data_path": "/d", "client.index": 1, "client.id": "c"})
    assert out == {"data-path": "/d", "i": 1}


def test_unknown_variable_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_template("hyperparameters.lr", "${nope}", set(), allow_client=False)
    assert err.value.field == "hyperparameters.lr" and "nope" in err.value.message
