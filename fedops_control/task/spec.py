"""Validate and normalise task specifications (protobuf -> plain dicts stored in the DB)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from fedops_common.convert import struct_to_dict
from fedops_common.proto import common_pb2
from fedops_common.strategy_settings import (
    BEST_METRIC,
    DEFAULT_RUN_CONFIG_KEYS,
    ENFORCED_BY_FEDOPS,
    MAX_CLIENT_RESTARTS,
    MAX_RESTART_BACKOFF_S,
    MAX_ROUND_TIMEOUT_S,
    MAX_ROUNDS,
)
from fedops_control.clients.selection import LabelSelection
from fedops_control.errors import InvalidArgument
from fedops_control.task.strategy import StrategySpec
from fedops_control.task.templating import check_template

MAX_VALUE_CHARS = 4096  # a hyperparameter or override value (templates included)
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
GIT_URL_PATTERN = re.compile(r"^(https://|http://|ssh://|git@|file://)\S+$")


def validate_strategy(strategy: StrategySpec) -> None:
    """Range checks; raises InvalidArgument naming ``strategy.<field>``."""
    if not 1 <= strategy.rounds <= MAX_ROUNDS:
        raise InvalidArgument("strategy.rounds", f"must be between 1 and {MAX_ROUNDS}")
    if strategy.min_clients < 1:
        raise InvalidArgument("strategy.min_clients", "must be at least 1")
    for name in ("fraction_train", "fraction_evaluate"):
        if not 0.0 < float(getattr(strategy, name)) <= 1.0:
            raise InvalidArgument(f"strategy.{name}", "must be in (0, 1]")
    if not 0.0 < strategy.round_timeout_s <= MAX_ROUND_TIMEOUT_S:
        raise InvalidArgument("strategy.round_timeout_s", f"must be in (0, {MAX_ROUND_TIMEOUT_S}] seconds")
    if not 0 <= strategy.client_max_restarts <= MAX_CLIENT_RESTARTS:
        raise InvalidArgument("strategy.client_max_restarts", f"must be between 0 and {MAX_CLIENT_RESTARTS}")
    if not 0.0 < strategy.client_restart_backoff_s <= MAX_RESTART_BACKOFF_S:
        raise InvalidArgument("strategy.client_restart_backoff_s", f"must be in (0, {MAX_RESTART_BACKOFF_S:g}] seconds")
    if not BEST_METRIC.match(strategy.best_metric):
        raise InvalidArgument("strategy.best_metric", "central.NAME, train.NAME, evaluate.NAME, client.train.NAME or "
                                                      f"client.evaluate.NAME, not {strategy.best_metric[:140]!r}")
    for setting, key in strategy.run_config_keys.items():
        if setting not in DEFAULT_RUN_CONFIG_KEYS:
            raise InvalidArgument(f"strategy.run_config_keys.{setting}", "unknown strategy setting "
                                  f"(one of {', '.join(DEFAULT_RUN_CONFIG_KEYS)})")
        if key and not KEY_PATTERN.match(key):
            raise InvalidArgument(f"strategy.run_config_keys.{setting}", f"invalid run-config key {key!r}")


def fit_strategy_to_app(strategy: StrategySpec, msg: common_pb2.StrategySettings, app_config: dict[str, Any],
                        previous: StrategySpec | None = None) -> StrategySpec:
    """Check that the app can receive every setting the request gives (or, for an update, changes),
    and mark the ones it cannot receive and nobody set as hard-coded by the app: nothing the user
    set is dropped silently. Quorum and round timeout are enforced by FedOps whatever the app does."""
    keys = dict(strategy.run_config_keys)
    given, mapped = strategy.given(msg, previous), strategy.mapped(msg, previous)
    have = ", ".join(sorted(app_config)) or "none"
    for setting, key in strategy.run_config_keys.items():
        enforced = setting in ENFORCED_BY_FEDOPS
        if not key:
            if setting in given and not enforced:
                raise InvalidArgument(f"strategy.{setting}", f"the app hard-codes it (strategy.run_config_keys."
                                      f"{setting} is empty), so FedOps cannot pass it; map it to a run-config key "
                                      "or leave it unset")
            continue
        if key in app_config:
            continue
        if setting in mapped:
            raise InvalidArgument(f"strategy.run_config_keys.{setting}",
                                  f"the app's [tool.flwr.app.config] has no key {key!r} (it has: {have})")
        if setting in given and not enforced:
            raise InvalidArgument(f"strategy.{setting}",
                                  f"the app cannot receive it: its [tool.flwr.app.config] has no key {key!r} "
                                  f"(it has: {have}); map it with strategy.run_config_keys.{setting}=KEY, or "
                                  "leave it unset and let the app decide")
        keys[setting] = ""  # the app decides (quorum and round timeout: FedOps still enforces them)
    return dataclasses.replace(strategy, run_config_keys=keys)


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


def check_keys(prefix: str, values: dict[str, Any], app_config: dict[str, Any]) -> None:
    """Every key must be one of the app's run-config keys (a typo must not be dropped silently)."""
    for key in values:
        if key not in app_config:
            raise InvalidArgument(f"{prefix}.{key}", "not a key of the app's [tool.flwr.app.config] "
                                                     f"({', '.join(sorted(app_config)) or 'it has none'})")


def _check_values(prefix: str, values: dict[str, Any], hp_names: set[str], allow_client: bool) -> None:
    for key, value in values.items():
        field = f"{prefix}.{key}"
        if not KEY_PATTERN.match(key):
            raise InvalidArgument(field, "keys use letters, digits, '_', '-', '.' (max 128)")
        if isinstance(value, (dict, list)) or value is None:
            raise InvalidArgument(field, "values must be a string, number or boolean")
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise InvalidArgument(field, f"value longer than {MAX_VALUE_CHARS} characters")
        check_template(field, value, hp_names, allow_client)


def task_from_proto(msg: common_pb2.Task, previous: StrategySpec | None = None) -> dict[str, Any]:
    """Validate a Task message and return the dict stored in the DB (without id/timestamps);
    ``previous``: the stored strategy, when updating."""
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
    strategy = StrategySpec.from_proto(msg.strategy)
    validate_strategy(strategy)
    hyperparameters = struct_to_dict(msg.hyperparameters)
    client_config = struct_to_dict(msg.client_config)
    _check_values("hyperparameters", hyperparameters, set(hyperparameters), allow_client=False)
    _check_values("client_config", client_config, set(hyperparameters), allow_client=True)
    if "local_path" in app:
        known = read_app_config(Path(app["local_path"]).expanduser())
        check_keys("hyperparameters", hyperparameters, known)
        strategy = fit_strategy_to_app(strategy, msg.strategy, known, previous)
    return {
        "title": title,
        "description": msg.description,
        "tags": tags,
        "app": app,
        "strategy": strategy.to_dict(),
        "hyperparameters": hyperparameters,
        "client_config": client_config,
        "label_selection": (LabelSelection.from_proto("label_selection", msg.label_selection).to_dict()
                            if msg.HasField("label_selection") else None),
    }
