"""``${...}`` templating of hyperparameters and per-client config.

Variables (FedML's internal-variable names are accepted as aliases):

=========================  =====================================  ======================
variable                   meaning                                FedML alias
=========================  =====================================  ======================
``${run.id}``              FedOps run id                          ``${FEDSYS.RUN_ID}``
``${run.client_count}``    number of selected clients             ``${FEDSYS.CLIENT_NUM}``
``${run.client_ids}``      comma-separated client ids             ``${FEDSYS.CLIENT_ID_LIST}``
``${task.id}``             task id
``${task.title}``          task title
``${strategy.<field>}``    a strategy setting, e.g. rounds
``${hp.<name>}``           another hyperparameter
``${client.id}``           the client's id (client_config only)
``${client.index}``        0-based position among the selected clients
``${client.data_path}``    the client's private local data path   ``${FEDSYS.PRIVATE_LOCAL_DATA}``
=========================  =====================================  ======================

A value that is exactly one ``${...}`` keeps the variable's type; otherwise the
variables are interpolated into the string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fedops_control.errors import InvalidArgument

PATTERN = re.compile(r"\$\{([^}]*)\}")

ALIASES = {
    "FEDSYS.RUN_ID": "run.id",
    "FEDSYS_RUN_ID": "run.id",
    "FEDSYS.CLIENT_NUM": "run.client_count",
    "FEDSYS_CLIENT_NUM": "run.client_count",
    "FEDSYS.CLIENT_ID_LIST": "run.client_ids",
    "FEDSYS_CLIENT_ID_LIST": "run.client_ids",
    "FEDSYS.PRIVATE_LOCAL_DATA": "client.data_path",
    "FEDSYS_PRIVATE_LOCAL_DATA": "client.data_path",
}
RUN_VARIABLES = {"run.id", "run.client_count", "run.client_ids", "task.id", "task.title"}
CLIENT_VARIABLES = {"client.id", "client.index", "client.data_path"}
STRATEGY_FIELDS = {"name", "rounds", "min_clients", "fraction_train", "fraction_evaluate", "round_timeout_s"}


def _canonical(name: str) -> str:
    name = name.strip()
    return ALIASES.get(name, name)


def variables_in(value: Any) -> list[str]:
    """Canonical names of the variables used in ``value`` (strings only)."""
    if not isinstance(value, str):
        return []
    return [_canonical(m) for m in PATTERN.findall(value)]


def check_template(field: str, value: Any, hp_names: set[str], allow_client: bool) -> None:
    """Raise InvalidArgument if ``value`` uses an unknown or misplaced variable."""
    for name in variables_in(value):
        if name in RUN_VARIABLES:
            continue
        if name.startswith("strategy.") and name.split(".", 1)[1] in STRATEGY_FIELDS:
            continue
        if name.startswith("hp.") and name[3:] in hp_names:
            continue
        if name in CLIENT_VARIABLES:
            if allow_client:
                continue
            raise InvalidArgument(field, f"${{{name}}} is per client: use it in client_config, not here")
        raise InvalidArgument(field, f"unknown template variable ${{{name}}}")


def _substitute(field: str, value: Any, lookup: Mapping[str, Any]) -> Any:
    if not isinstance(value, str):
        return value
    whole = PATTERN.fullmatch(value.strip())
    if whole:
        name = _canonical(whole.group(1))
        if name not in lookup:
            raise InvalidArgument(field, f"cannot resolve ${{{name}}}")
        return lookup[name]

    def repl(match: re.Match[str]) -> str:
        name = _canonical(match.group(1))
        if name not in lookup:
            raise InvalidArgument(field, f"cannot resolve ${{{name}}}")
        return str(lookup[name])

    return PATTERN.sub(repl, value)


def render_hyperparameters(hyperparameters: Mapping[str, Any], variables: Mapping[str, Any],
                           field_prefix: str = "hyperparameters") -> dict[str, Any]:
    """Resolve every ``${...}``, including ``${hp.x}`` chains; cycles are refused."""
    resolved: dict[str, Any] = {}
    resolving: set[str] = set()

    def resolve(key: str) -> Any:
        if key in resolved:
            return resolved[key]
        if key in resolving:
            raise InvalidArgument(f"{field_prefix}.{key}", "circular ${hp.*} reference")
        resolving.add(key)
        raw = hyperparameters[key]
        lookup = dict(variables)
        for name in variables_in(raw):
            if name.startswith("hp.") and name[3:] in hyperparameters:
                lookup[name] = resolve(name[3:])
        resolved[key] = _substitute(f"{field_prefix}.{key}", raw, lookup)
        resolving.discard(key)
        return resolved[key]

    for key in hyperparameters:
        resolve(key)
    return resolved


def render_client_config(client_config: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve ``${...}`` in one client's node config."""
    return {k: _substitute(f"client_config.{k}", v, variables) for k, v in client_config.items()}
