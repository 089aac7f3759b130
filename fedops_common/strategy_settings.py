"""The strategy settings of a task as the API defines them: names, where they reach the app, limits.

Shared by the control service (which validates them) and its clients (``fedopsctl``, the
dashboard), which check them before a call.
"""

from __future__ import annotations

import re

# Strategy setting -> the run-config key of the app that receives it (Flower template names).
DEFAULT_RUN_CONFIG_KEYS = {
    "rounds": "num-server-rounds",
    "fraction_train": "fraction-train",
    "fraction_evaluate": "fraction-evaluate",
    "min_clients": "min-nodes",
    "round_timeout_s": "round-timeout",
}
# Settings FedOps enforces itself (the observing Grid): the app's key, if any, only mirrors them.
ENFORCED_BY_FEDOPS = ("min_clients", "round_timeout_s")
# best_metric: central.NAME, train.NAME, evaluate.NAME, client.train.NAME, client.evaluate.NAME.
BEST_METRIC = re.compile(r"^(central|train|evaluate|client\.train|client\.evaluate)\.[A-Za-z0-9_.:/-]{1,128}$")
MAX_CLIENT_RESTARTS = 100
MAX_RESTART_BACKOFF_S = 3600.0
MAX_ROUNDS = 100_000
MAX_ROUND_TIMEOUT_S = 7 * 24 * 3600
