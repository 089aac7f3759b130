"""Unit tests of StrategySpec (fedops_control/task/strategy.py) and fit_strategy_to_app (task/spec.py)."""

from __future__ import annotations

import dataclasses

import pytest

from fedops_common.proto import common_pb2
from fedops_common.strategy_settings import DEFAULT_RUN_CONFIG_KEYS
from fedops_control.errors import InvalidArgument
from fedops_control.task.spec import fit_strategy_to_app
from fedops_control.task.strategy import StrategySpec

S = common_pb2
# An app whose [tool.flwr.app.config] has every key FedOps maps by default.
FULL_APP = {key: 1 for key in DEFAULT_RUN_CONFIG_KEYS.values()} | {"learning-rate": 0.1}


# ---------------------------------------------------------------- StrategySpec

def test_defaults() -> None:
    spec = StrategySpec()
    assert (spec.name, spec.rounds, spec.min_clients, spec.round_timeout_s) == ("FedAvg", 3, 2, 300.0)
    assert (spec.fraction_train, spec.fraction_evaluate) == (1.0, 1.0)
    assert (spec.best_metric, spec.best_metric_lower_is_better) == ("central.accuracy", False)
    assert (spec.client_max_restarts, spec.client_restart_backoff_s) == (2, 1.0)
    assert spec.run_config_keys == DEFAULT_RUN_CONFIG_KEYS
    assert spec.run_config_keys is not DEFAULT_RUN_CONFIG_KEYS  # not the shared module dict


def test_from_proto_of_an_empty_message_is_the_default() -> None:
    assert StrategySpec.from_proto(S.StrategySettings()) == StrategySpec()


def test_from_proto_takes_given_values_and_merges_keys() -> None:
    msg = S.StrategySettings(name="FedProx", rounds=7, min_clients=3, fraction_train=0.5, fraction_evaluate=0.25,
                             round_timeout_s=60, best_metric="evaluate.accuracy", client_max_restarts=5,
                             client_restart_backoff_s=2.5, run_config_keys={"rounds": "server-rounds"})
    spec = StrategySpec.from_proto(msg)
    assert (spec.name, spec.rounds, spec.min_clients) == ("FedProx", 7, 3)
    assert (spec.fraction_train, spec.fraction_evaluate, spec.round_timeout_s) == (0.5, 0.25, 60.0)
    assert (spec.best_metric, spec.best_metric_lower_is_better) == ("evaluate.accuracy", False)
    assert (spec.client_max_restarts, spec.client_restart_backoff_s) == (5, 2.5)
    assert spec.run_config_keys == {**DEFAULT_RUN_CONFIG_KEYS, "rounds": "server-rounds"}


def test_client_max_restarts_zero_means_never_and_unset_means_default() -> None:
    assert StrategySpec.from_proto(S.StrategySettings(client_max_restarts=0)).client_max_restarts == 0
    assert StrategySpec.from_proto(S.StrategySettings()).client_max_restarts == 2
    assert StrategySpec.from_proto(S.StrategySettings(client_restart_backoff_s=0)).client_restart_backoff_s == 1.0


@pytest.mark.parametrize("metric, flag, lower", [
    ("central.loss", None, True),
    ("evaluate.loss", None, True),
    ("client.train.val_loss", None, True),
    ("central.accuracy", None, False),
    ("central.loss_ratio", None, False),   # by name: only a metric *ending* in loss
    ("central.loss", False, False),        # said explicitly: wins over the name
    ("central.accuracy", True, True),
    ("", None, False),                     # default metric central.accuracy
])
def test_lower_is_better_unset_is_decided_by_name(metric: str, flag: bool | None, lower: bool) -> None:
    msg = S.StrategySettings(best_metric=metric)
    if flag is not None:
        msg.best_metric_lower_is_better = flag
    assert StrategySpec.from_proto(msg).best_metric_lower_is_better is lower


def test_proto_round_trip() -> None:
    spec = StrategySpec(name="X", rounds=9, min_clients=4, fraction_train=0.3, fraction_evaluate=0.6,
                        round_timeout_s=12.5, best_metric="central.loss", best_metric_lower_is_better=False,
                        client_max_restarts=0, client_restart_backoff_s=4.0,
                        run_config_keys={**DEFAULT_RUN_CONFIG_KEYS, "rounds": "", "min_clients": "quorum"})
    msg = spec.to_proto()
    assert msg.HasField("best_metric_lower_is_better") and msg.HasField("client_max_restarts")
    # the explicit False survives, although the metric is named ...loss; 0 restarts survives too
    assert StrategySpec.from_proto(msg) == spec
    assert StrategySpec.from_proto(StrategySpec().to_proto()) == StrategySpec()


def test_dict_round_trip_and_defaults() -> None:
    spec = StrategySpec(rounds=11, best_metric="central.loss", best_metric_lower_is_better=True,
                        run_config_keys={**DEFAULT_RUN_CONFIG_KEYS, "fraction_train": ""})
    assert StrategySpec.from_dict(spec.to_dict()) == spec
    assert StrategySpec.from_dict(None) == StrategySpec()
    assert StrategySpec.from_dict({}) == StrategySpec()


def test_from_dict_ignores_unknown_keys_merges_keys_and_coerces_integers() -> None:
    spec = StrategySpec.from_dict({"rounds": 4.0, "min_clients": "3", "client_max_restarts": 1.0,
                                   "no_such_setting": 1, "run_config_keys": {"rounds": "r"}})
    assert (spec.rounds, spec.min_clients, spec.client_max_restarts) == (4, 3, 1)
    assert isinstance(spec.rounds, int) and isinstance(spec.min_clients, int)
    assert spec.run_config_keys == {**DEFAULT_RUN_CONFIG_KEYS, "rounds": "r"}
    assert StrategySpec.from_dict({"run_config_keys": None}).run_config_keys == DEFAULT_RUN_CONFIG_KEYS


def test_given_without_previous_is_what_the_request_sets() -> None:
    msg = S.StrategySettings(rounds=5, fraction_train=0.5, name="FedAvg", best_metric="central.loss")
    spec = StrategySpec.from_proto(msg)
    assert spec.given(msg) == {"rounds", "fraction_train"}  # only settings that reach the app
    assert StrategySpec().given(S.StrategySettings()) == set()


def test_given_with_previous_is_what_the_update_changes() -> None:
    previous = StrategySpec.from_proto(S.StrategySettings(rounds=5, min_clients=3, round_timeout_s=60))
    msg = S.StrategySettings(rounds=5, min_clients=4, round_timeout_s=60, fraction_evaluate=0.5)
    spec = StrategySpec.from_proto(msg)
    assert spec.given(msg, previous) == {"min_clients", "fraction_evaluate"}
    # a setting left unset is not "given", even if it differs from the stored one (it went back to the default)
    unset = S.StrategySettings()
    assert StrategySpec.from_proto(unset).given(unset, previous) == set()


def test_mapped_without_and_with_previous() -> None:
    msg = S.StrategySettings(run_config_keys={"rounds": "server-rounds", "min_clients": "min-nodes"})
    spec = StrategySpec.from_proto(msg)
    assert spec.mapped(msg) == {"rounds", "min_clients"}
    previous = StrategySpec.from_proto(S.StrategySettings(run_config_keys={"rounds": "server-rounds"}))
    assert spec.mapped(msg, previous) == set()  # both keys are what was stored (min-nodes is the default)
    changed = S.StrategySettings(run_config_keys={"rounds": "total-rounds", "min_clients": "min-nodes"})
    assert StrategySpec.from_proto(changed).mapped(changed, previous) == {"rounds"}
    assert spec.mapped(S.StrategySettings()) == set()


def test_app_decides_lists_unmapped_settings_except_enforced_ones() -> None:
    keys = {**DEFAULT_RUN_CONFIG_KEYS, "rounds": "", "fraction_train": "", "min_clients": "", "round_timeout_s": ""}
    spec = StrategySpec(run_config_keys=keys)
    assert spec.app_decides() == ["fraction_train", "rounds"]
    assert StrategySpec().app_decides() == []
    assert spec.run_config_values() == {"fraction-evaluate": 1.0}


def test_run_config_values_by_key() -> None:
    spec = StrategySpec(rounds=4, run_config_keys={**DEFAULT_RUN_CONFIG_KEYS, "round_timeout_s": ""})
    assert spec.run_config_values() == {"num-server-rounds": 4, "fraction-train": 1.0, "fraction-evaluate": 1.0,
                                        "min-nodes": 2}


# ---------------------------------------------------------------- fit_strategy_to_app

def fit(msg: S.StrategySettings, app_config: dict, previous: StrategySpec | None = None) -> StrategySpec:
    return fit_strategy_to_app(StrategySpec.from_proto(msg), msg, app_config, previous)


def test_an_app_with_every_key_receives_everything() -> None:
    msg = S.StrategySettings(rounds=5, min_clients=3)
    fitted = fit(msg, FULL_APP)
    assert fitted.run_config_keys == DEFAULT_RUN_CONFIG_KEYS
    assert fitted.app_decides() == []
    assert fitted.rounds == 5


def test_unset_settings_the_app_cannot_receive_are_marked_hard_coded() -> None:
    fitted = fit(S.StrategySettings(), {"learning-rate": 0.1})
    assert set(fitted.run_config_keys.values()) == {""}
    assert fitted.app_decides() == ["fraction_evaluate", "fraction_train", "rounds"]


def test_a_given_setting_the_app_cannot_receive_is_refused() -> None:
    app = {k: v for k, v in FULL_APP.items() if k != "num-server-rounds"}
    with pytest.raises(InvalidArgument) as err:
        fit(S.StrategySettings(rounds=5), app)
    assert err.value.field == "strategy.rounds"
    assert "'num-server-rounds'" in err.value.message
    assert "fraction-evaluate" in err.value.message  # it lists what the app has


@pytest.mark.parametrize("setting, msg", [
    ("min_clients", S.StrategySettings(min_clients=5)),
    ("round_timeout_s", S.StrategySettings(round_timeout_s=30)),
])
def test_enforced_settings_are_not_refused(setting: str, msg: S.StrategySettings) -> None:
    app = {k: v for k, v in FULL_APP.items() if k != DEFAULT_RUN_CONFIG_KEYS[setting]}
    fitted = fit(msg, app)
    assert fitted.run_config_keys[setting] == ""      # the app does not receive it...
    assert setting not in fitted.app_decides()         # ...but FedOps still enforces it
    assert getattr(fitted, setting) == getattr(StrategySpec.from_proto(msg), setting)


def test_enforced_setting_with_empty_key_is_not_refused() -> None:
    msg = S.StrategySettings(min_clients=4, run_config_keys={"min_clients": ""})
    fitted = fit(msg, FULL_APP)
    assert fitted.run_config_keys["min_clients"] == "" and fitted.min_clients == 4


def test_a_given_setting_whose_key_is_empty_is_refused() -> None:
    msg = S.StrategySettings(rounds=5, run_config_keys={"rounds": ""})
    with pytest.raises(InvalidArgument) as err:
        fit(msg, FULL_APP)
    assert err.value.field == "strategy.rounds"
    assert "hard-codes" in err.value.message


def test_an_empty_key_for_an_unset_setting_is_accepted() -> None:
    msg = S.StrategySettings(run_config_keys={"rounds": ""})
    fitted = fit(msg, FULL_APP)
    assert fitted.app_decides() == ["rounds"]


def test_a_mapping_to_a_key_the_app_lacks_is_refused() -> None:
    msg = S.StrategySettings(run_config_keys={"rounds": "total-rounds"})
    with pytest.raises(InvalidArgument) as err:
        fit(msg, FULL_APP)
    assert err.value.field == "strategy.run_config_keys.rounds"
    # an enforced setting mapped to a missing key is a typo too
    with pytest.raises(InvalidArgument) as err:
        fit(S.StrategySettings(run_config_keys={"min_clients": "quorum"}), FULL_APP)
    assert err.value.field == "strategy.run_config_keys.min_clients"


def test_a_mapping_to_a_key_the_app_has_is_used() -> None:
    msg = S.StrategySettings(rounds=8, run_config_keys={"rounds": "total-rounds"})
    fitted = fit(msg, {**FULL_APP, "total-rounds": 1})
    assert fitted.run_config_keys["rounds"] == "total-rounds"
    assert fitted.run_config_values()["total-rounds"] == 8


def test_update_keeps_an_unchanged_hard_coded_setting() -> None:
    app = {"learning-rate": 0.1}
    previous = fit(S.StrategySettings(), app)  # created without rounds: the app decides them
    assert "rounds" in previous.app_decides()
    # the update sends the stored values back (rounds=3 is the stored default): nothing changed
    msg = previous.to_proto()
    fitted = fit(msg, app, previous)
    assert fitted.app_decides() == previous.app_decides()
    # without previous, the same request is refused: it sets rounds and the app cannot receive it
    with pytest.raises(InvalidArgument):
        fit(msg, app)


def test_update_refuses_a_changed_setting_the_app_cannot_receive() -> None:
    app = {"learning-rate": 0.1}
    previous = fit(S.StrategySettings(), app)
    msg = previous.to_proto()
    msg.rounds = 10
    with pytest.raises(InvalidArgument) as err:
        fit(msg, app, previous)
    assert err.value.field == "strategy.rounds"


def test_update_with_an_unchanged_mapping_to_a_key_the_app_dropped() -> None:
    """The stored mapping is not re-validated on update; with the setting unset it becomes hard-coded."""
    previous = StrategySpec.from_proto(S.StrategySettings(run_config_keys={"rounds": "total-rounds"}))
    msg = S.StrategySettings(run_config_keys={"rounds": "total-rounds"})
    fitted = fit(msg, FULL_APP, previous)
    assert fitted.run_config_keys["rounds"] == ""
    with pytest.raises(InvalidArgument):
        fit(msg, FULL_APP)  # as a new task: the mapping names a key the app lacks


def test_fit_does_not_change_anything_but_the_keys() -> None:
    msg = S.StrategySettings(rounds=6, fraction_train=0.5)
    spec = StrategySpec.from_proto(msg)
    fitted = fit_strategy_to_app(spec, msg, {"num-server-rounds": 1, "fraction-train": 1})
    assert dataclasses.replace(fitted, run_config_keys=spec.run_config_keys) == spec
    assert fitted.run_config_keys == {**DEFAULT_RUN_CONFIG_KEYS, "fraction_evaluate": "", "min_clients": "",
                                      "round_timeout_s": ""}
