"""A task's strategy settings as one typed object.

Stored as JSON in the task and run rows; every reader goes through :meth:`StrategySpec.from_dict`,
so defaults live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fedops_common.proto import common_pb2
from fedops_common.strategy_settings import DEFAULT_RUN_CONFIG_KEYS, ENFORCED_BY_FEDOPS


@dataclass(frozen=True)
class StrategySpec:
    """How a task's rounds run; see ``StrategySettings`` in common.proto for each field."""

    name: str = "FedAvg"
    rounds: int = 3
    min_clients: int = 2
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    round_timeout_s: float = 300.0
    best_metric: str = "central.accuracy"
    best_metric_lower_is_better: bool = False
    client_max_restarts: int = 2
    client_restart_backoff_s: float = 1.0
    run_config_keys: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RUN_CONFIG_KEYS))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> StrategySpec:
        """From a stored dict; missing keys take the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in (values or {}).items() if k in known}
        kwargs["run_config_keys"] = {**DEFAULT_RUN_CONFIG_KEYS, **(kwargs.get("run_config_keys") or {})}
        spec = cls(**kwargs)
        return dataclasses.replace(spec, rounds=int(spec.rounds), min_clients=int(spec.min_clients),
                                   client_max_restarts=int(spec.client_max_restarts))

    @classmethod
    def from_proto(cls, msg: common_pb2.StrategySettings) -> StrategySpec:
        """Zero (unset) fields take the defaults; a loss metric is lower-is-better unless said otherwise."""
        default = cls()
        values: dict[str, Any] = {}
        for name in ("name", "best_metric", "rounds", "min_clients", "fraction_train", "fraction_evaluate",
                     "round_timeout_s", "client_restart_backoff_s"):
            if getattr(msg, name):
                values[name] = getattr(msg, name)
        if msg.HasField("client_max_restarts"):
            values["client_max_restarts"] = msg.client_max_restarts
        metric = values.get("best_metric", default.best_metric)
        values["best_metric_lower_is_better"] = (msg.best_metric_lower_is_better
                                                 if msg.HasField("best_metric_lower_is_better")
                                                 else metric.endswith("loss"))
        values["run_config_keys"] = dict(msg.run_config_keys)
        return cls.from_dict(values)

    def given(self, msg: common_pb2.StrategySettings, previous: StrategySpec | None = None) -> set[str]:
        """Settings the request sets (non-zero), or, for an update, changes from ``previous``."""
        return {name for name in DEFAULT_RUN_CONFIG_KEYS
                if getattr(msg, name) and (previous is None or getattr(previous, name) != getattr(self, name))}

    def mapped(self, msg: common_pb2.StrategySettings, previous: StrategySpec | None = None) -> set[str]:
        """Settings whose run-config key the request names, or, for an update, changes."""
        return {name for name, key in msg.run_config_keys.items()
                if previous is None or previous.run_config_keys.get(name) != key}

    def to_dict(self) -> dict[str, Any]:
        """The stored form."""
        return dataclasses.asdict(self)

    def to_proto(self) -> common_pb2.StrategySettings:
        return common_pb2.StrategySettings(**self.to_dict())

    def app_decides(self) -> list[str]:
        """Settings the app hard-codes: no run-config key receives them (FedOps enforcement aside)."""
        return sorted(s for s, key in self.run_config_keys.items() if not key and s not in ENFORCED_BY_FEDOPS)

    def run_config_values(self) -> dict[str, Any]:
        """The app's run-config key -> value for every setting that has a key."""
        return {key: getattr(self, setting) for setting, key in self.run_config_keys.items() if key}
