"""A run's plan: what a run of a task will be, computed without I/O (unit-tested on its own).

The run manager gathers the task, the clients and the overrides, asks for a plan, and stores it:
the rendered run config and node configs, the config hash that model versions record, the round
count FedOps expects, and the settings the app decides itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fedops_control.errors import InvalidArgument
from fedops_control.task.spec import KEY_PATTERN, MAX_VALUE_CHARS
from fedops_control.task.strategy import StrategySpec
from fedops_control.task.templating import check_template, render_client_config, render_hyperparameters


@dataclass(frozen=True)
class TaskInputs:
    """What a run takes from its task."""

    task_id: str
    title: str
    app: dict[str, Any]
    strategy: StrategySpec
    hyperparameters: dict[str, Any]
    client_config: dict[str, Any]


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    client_ids: list[str]
    run_config: dict[str, Any]            # the app's run config values FedOps sets
    node_configs: dict[str, dict[str, Any]]  # per client
    config_hash: str
    total_rounds: int                     # 0: the app decides (known once its strategy starts)
    app_decides: list[str]                # strategy settings no run-config key receives


def check_overrides(overrides: dict[str, Any], task_hyperparameters: dict[str, Any]) -> None:
    """Run-start overrides: plain keys and scalar values; templates may name only known values."""
    for key, value in overrides.items():
        if not KEY_PATTERN.match(key) or isinstance(value, (dict, list)) or value is None:
            raise InvalidArgument(f"hyperparameter_overrides.{key}", "invalid key or value")
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise InvalidArgument(f"hyperparameter_overrides.{key}", f"value longer than {MAX_VALUE_CHARS} characters")
        check_template(f"hyperparameter_overrides.{key}", value, set(task_hyperparameters) | set(overrides), False)


def plan_run(run_id: str, task: TaskInputs, client_ids: list[str], data_paths: dict[str, str],
             overrides: dict[str, Any]) -> RunPlan:
    """Render the run config (task values, overrides, strategy settings the app receives) and each
    client's node config; hash them with the app and strategy."""
    strategy = task.strategy
    variables = {
        "run.id": run_id, "run.client_count": len(client_ids), "run.client_ids": ",".join(client_ids),
        "task.id": task.task_id, "task.title": task.title,
        **{f"strategy.{k}": v for k, v in strategy.to_dict().items() if not isinstance(v, dict)},
    }
    run_config = render_hyperparameters({**task.hyperparameters, **overrides}, variables)
    for key, value in strategy.run_config_values().items():
        run_config.setdefault(key, value)
    node_configs = {}
    for index, cid in enumerate(client_ids):
        client_vars = {**variables, "client.id": cid, "client.index": index, "client.data_path": data_paths[cid]}
        node_configs[cid] = render_client_config(task.client_config, client_vars)
    config_hash = hashlib.sha256(json.dumps(
        {"app": task.app, "strategy": strategy.to_dict(), "hp": run_config, "nodes": node_configs},
        sort_keys=True, default=str).encode()).hexdigest()
    return RunPlan(run_id=run_id, client_ids=list(client_ids), run_config=run_config, node_configs=node_configs,
                   config_hash=config_hash,
                   total_rounds=strategy.rounds if strategy.run_config_keys["rounds"] else 0,
                   app_decides=strategy.app_decides())
