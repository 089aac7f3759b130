"""Validate and normalise task specifications (protobuf -> plain dicts stored in the DB)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tomllib

from fedops_common.convert import struct_to_dict
from fedops_common.proto import common_pb2
from fedops_control.task.errors import InvalidArgument
from fedops_control.task.templating import check_template

# Strategy setting -> the run-config key of the app that receives it (Flower template names).
DEFAULT_RUN_CONFIG_KEYS = {
    "rounds": "num-server-rounds",
    "fraction_train": "fraction-train",
    "fraction_evaluate": "fraction-evaluate",
    "min_clients": "min-nodes",
    "round_timeout_s": "round-timeout",
}
STRATEGY_DEFAULTS: dict[str, Any] = {
    "name": "FedAvg",
    "rounds": 3,
    "min_clients": 2,
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "round_timeout_s": 300.0,
    "best_metric": "central.accuracy",
    "best_metric_lower_is_better": False,
    "client_max_restarts": 2,
    "client_restart_backoff_s": 1.0,
}
MAX_CLIENT_RESTARTS = 100
MAX_RESTART_BACKOFF_S = 3600.0
MAX_ROUNDS = 100_000
MAX_ROUND_TIMEOUT_S = 7 * 24 * 3600
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
GIT_URL_PATTERN = re.compile(r"^(https://|http://|ssh://|git@|file://)\S+$")


def strategy_from_proto(msg: common_pb2.StrategySettings) -> dict[str, Any]:
    """Strategy dict with defaults for unset (zero) fields."""
    out = dict(STRATEGY_DEFAULTS)
    for field in ("name", "best_metric"):
        if getattr(msg, field):
            out[field] = getattr(msg, field)
    if msg.HasField("client_max_restarts"):
        out["client_max_restarts"] = msg.client_max_restarts
    for field in ("rounds", "min_clients", "fraction_train", "fraction_evaluate", "round_timeout_s",
                  "client_restart_backoff_s"):
        value = getattr(msg, field)
        if value != 0:
            out[field] = value
    out["best_metric_lower_is_better"] = bool(msg.best_metric_lower_is_better) or (
        out["best_metric"].endswith("loss") and not msg.best_metric)
    out["run_config_keys"] = {**DEFAULT_RUN_CONFIG_KEYS, **dict(msg.run_config_keys)}
    return out


def validate_strategy(strategy: dict[str, Any]) -> None:
    """Range checks; raises InvalidArgument naming ``strategy.<field>``."""
    if not 1 <= int(strategy["rounds"]) <= MAX_ROUNDS:
        raise InvalidArgument("strategy.rounds", f"must be between 1 and {MAX_ROUNDS}")
    if int(strategy["min_clients"]) < 1:
        raise InvalidArgument("strategy.min_clients", "must be at least 1")
    for field in ("fraction_train", "fraction_evaluate"):
        if not 0.0 < float(strategy[field]) <= 1.0:
            raise InvalidArgument(f"strategy.{field}", "must be in (0, 1]")
    if not 0.0 < float(strategy["round_timeout_s"]) <= MAX_ROUND_TIMEOUT_S:
        raise InvalidArgument("strategy.round_timeout_s", f"must be in (0, {MAX_ROUND_TIMEOUT_S}] seconds")
    if not 0 <= int(strategy.get("client_max_restarts", 0)) <= MAX_CLIENT_RESTARTS:
        raise InvalidArgument("strategy.client_max_restarts", f"must be between 0 and {MAX_CLIENT_RESTARTS}")
    if not 0.0 < float(strategy.get("client_restart_backoff_s", 1.0)) <= MAX_RESTART_BACKOFF_S:
        raise InvalidArgument("strategy.client_restart_backoff_s", f"must be in (0, {MAX_RESTART_BACKOFF_S:g}] seconds")
    for setting, key in strategy["run_config_keys"].items():
        if setting not in DEFAULT_RUN_CONFIG_KEYS:
            raise InvalidArgument(f"strategy.run_config_keys.{setting}", "unknown strategy setting")
        if key and not KEY_PATTERN.match(key):
            raise InvalidArgument(f"strategy.run_config_keys.{setting}", f"invalid run-config key {key!r}")


def app_from_proto(msg: common_pb2.AppReference) -> dict[str, Any]:
    """App reference dict: {"local_path": ...} or {"git": {url, ref, subdirectory}}."""
    source = msg.WhichOneof("source")
    if source == "local_path":
        return {"local_path": msg.local_path}
    if source == "git":
        return {"git": {"url": msg.git.url, "ref": msg.git.ref or "main",
                        "subdirectory": msg.git.subdirectory}}
    raise InvalidArgument("app", "set app.local_path or app.git")


def read_app_config(app_dir: Path) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of a Flower app; raises InvalidArgument if not an app."""
    pyproject = app_dir / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument("app.local_path", f"{app_dir} has no pyproject.toml (not a Flower app)") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgument("app.local_path", f"{pyproject} is not valid TOML: {err}") from None
    app = data.get("tool", {}).get("flwr", {}).get("app", {})
    components = app.get("components", {})
    if not components.get("serverapp") or not components.get("clientapp"):
        raise InvalidArgument("app.local_path", f"{pyproject} lacks [tool.flwr.app.components]")
    return dict(app.get("config", {}))


def validate_app(app: dict[str, Any]) -> None:
    """A local app must be a Flower app directory; a git URL must look like one."""
    if "local_path" in app:
        path = Path(app["local_path"]).expanduser()
        if not app["local_path"] or not path.is_dir():
            raise InvalidArgument("app.local_path", f"directory {app['local_path']!r} does not exist")
        read_app_config(path)
    else:
        git = app["git"]
        if not GIT_URL_PATTERN.match(git["url"] or ""):
            raise InvalidArgument("app.git.url", "must be an https://, ssh://, git@ or file:// URL")
        if ".." in Path(git.get("subdirectory") or ".").parts:
            raise InvalidArgument("app.git.subdirectory", "must stay inside the repository")


def _check_values(prefix: str, values: dict[str, Any], hp_names: set[str], allow_client: bool) -> None:
    for key, value in values.items():
        field = f"{prefix}.{key}"
        if not KEY_PATTERN.match(key):
            raise InvalidArgument(field, "keys use letters, digits, '_', '-', '.' (max 128)")
        if isinstance(value, (dict, list)) or value is None:
            raise InvalidArgument(field, "values must be a string, number or boolean")
        if isinstance(value, str) and len(value) > 4096:
            raise InvalidArgument(field, "value longer than 4096 characters")
        check_template(field, value, hp_names, allow_client)


def task_from_proto(msg: common_pb2.Task) -> dict[str, Any]:
    """Validate a Task message and return the dict stored in the DB (without id/timestamps)."""
    title = msg.title.strip()
    if not title:
        raise InvalidArgument("title", "must not be empty")
    if len(title) > 200:
        raise InvalidArgument("title", "at most 200 characters")
    if len(msg.description) > 10_000:
        raise InvalidArgument("description", "at most 10000 characters")
    tags = [t.strip() for t in msg.tags]
    if len(tags) > 32 or any(not t or len(t) > 64 for t in tags):
        raise InvalidArgument("tags", "up to 32 non-empty tags of at most 64 characters")
    if not msg.HasField("app"):
        raise InvalidArgument("app", "a Flower app reference is required")
    app = app_from_proto(msg.app)
    validate_app(app)
    strategy = strategy_from_proto(msg.strategy)
    validate_strategy(strategy)
    hyperparameters = struct_to_dict(msg.hyperparameters)
    client_config = struct_to_dict(msg.client_config)
    _check_values("hyperparameters", hyperparameters, set(hyperparameters), allow_client=False)
    _check_values("client_config", client_config, set(hyperparameters), allow_client=True)
    if "local_path" in app:
        known = read_app_config(Path(app["local_path"]).expanduser())
        for key in hyperparameters:
            if key not in known:
                raise InvalidArgument(f"hyperparameters.{key}",
                                      f"not a key of the app's [tool.flwr.app.config] ({', '.join(sorted(known))})")
    return {
        "title": title,
        "description": msg.description,
        "tags": tags,
        "app": app,
        "strategy": strategy,
        "hyperparameters": hyperparameters,
        "client_config": client_config,
    }
