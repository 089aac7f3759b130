"""Keys FedOps adds to the run config and node config of the apps it launches.

One table shared by the control service (which writes them into the bundle it submits and
into each SuperNode's node config), the agent, and the wrappers that run inside Flower's
app processes (which read them). Every key starts with ``fedops-`` so it cannot collide
with a user's own run-config keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Run config (the bundle's [tool.flwr.app.config]): read by both wrappers.
RUN_ID = "fedops-run-id"
TASK_ID = "fedops-task-id"
INNER_SERVERAPP = "fedops-serverapp"      # the user's own ServerApp component ("module:attr")
INNER_CLIENTAPP = "fedops-clientapp"      # the user's own ClientApp component
ROUND_TIMEOUT = "fedops-round-timeout"    # seconds; the observing Grid caps every wait with it
QUORUM = "fedops-quorum"                  # strategy.min_clients
NODE_COUNT = "fedops-node-count"          # the run's selected clients
RESUME_MODEL_ID = "fedops-resume-model-id"
ROUND_OFFSET = "fedops-round-offset"      # rounds done before this launch: reports number on from it

# How the apps reach the control service (run config for the ServerApp, node config for ClientApps).
CONTROL_ADDRESS = "fedops-control-address"
CREDENTIAL_FILE = "fedops-credential-file"
TLS_CA_FILE = "fedops-tls-ca-file"
TLS_CERT_FILE = "fedops-tls-cert-file"
TLS_KEY_FILE = "fedops-tls-key-file"

# Node config of each SuperNode (set by the control service and the agent).
NODE_RUN_ID = RUN_ID
NODE_TASK_ID = TASK_ID
NODE_CLIENT_ID = "fedops-client-id"
# A task's client config may set this to false: its ClientApps are new processes, not warm forks
# (fedops_flower/warmapps). The agent's --no-warm-apps turns them off for every task.
NODE_WARM_APPS = "fedops-warm-apps"
# Environment of a run's SuperNode with warm apps: the import names of the app's declared
# dependencies (comma-separated), which the ClientApp template imports before it says it is ready.
WARM_IMPORTS_ENV = "FEDOPS_WARM_IMPORTS"
# Set in each task a warm template forks: the task says so in its reports (a new process has none).
WARM_FORK_ENV = "FEDOPS_WARM_FORK"
# Environment of a run's SuperNode with warm apps: a file (per task, on the agent) in which the ClientApp
# template keeps the library modules the app's first task imported; a template of a later run of the
# task imports them before the first message.
WARM_LEARNED_ENV = "FEDOPS_WARM_LEARNED"
# Environment of a run's SuperNode with warm apps: the Unix socket of the agent's spare ClientApp
# template for the task (started before the run, fedops_agent/spares.py), which the run's SuperExec
# adopts as its template.
WARM_SPARE_ENV = "FEDOPS_WARM_SPARE"
# The file a spare writes beside its socket once its imports are done (the socket's name + this).
WARM_SPARE_READY_SUFFIX = ".ready"

_OFF = {"false", "0", "no", "off"}


def config_text(config: Mapping[str, Any], key: str) -> str:
    """A node-config (or a task's client-config) value as text: Flower's node config holds TOML-style
    values (a string quoted), a task's client config may hold a bare word or a JSON value."""
    raw = config.get(key, "")
    if not isinstance(raw, str):
        return str(raw)
    raw = raw.strip()
    try:
        value = json.loads(raw) if raw else ""
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def warm_apps_wanted(config: Mapping[str, Any]) -> bool:
    """False when the task's client config sets ``fedops-warm-apps`` to false (a JSON or bare value)."""
    return config_text(config, NODE_WARM_APPS).lower() not in _OFF
