"""The FedOps Stack demo: 3 local agents, non-IID digits, FedAvg over 3 rounds, live progress.

Run with `make demo` (it creates the environment first). Everything lives under .fedops/demo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from digits_app.task import write_partitions  # noqa: E402 - imported once sys.path holds the app

from fedops_control.devstack import LocalStack  # noqa: E402 - imported once sys.path holds the app


def main(root: Path = Path(".fedops/demo"), rounds: int = 3, agents: int = 3) -> int:
    """Run the demo; returns the process exit code."""
    if root.exists():
        shutil.rmtree(root)
    data_dirs = [root / "data" / f"client{i}" for i in range(agents)]
    histograms = write_partitions(data_dirs)
    for i, hist in enumerate(histograms):
        print(f"client{i} local data (label: count): {hist}")
    # Telemetry stays in local JSON-lines files unless FEDOPS_ELASTICSEARCH_URL names an Elasticsearch.
    stack = LocalStack(root, elasticsearch_url=os.environ.get("FEDOPS_ELASTICSEARCH_URL", ""))
    try:
        address = stack.start_control()
        print(f"control service on {address} (SQLite: {root / 'control' / 'control.db'}; telemetry: "
              f"{root}/control/telemetry and {root}/agents/*/telemetry; metrics: http://{stack.metrics_address}/metrics)")
        task = stack.ctl_json("task", "create", "--title", "Digits FedAvg demo", "--app", str(HERE),
                              "--description", "FedAvg on non-IID partitions of scikit-learn digits",
                              "--tag", "demo", "--rounds", str(rounds), "--min-clients", "2",
                              "--round-timeout", "120", "--hp", "local-epochs=2", "--hp", "learning-rate=0.1")
        for i, data_dir in enumerate(data_dirs):
            stack.start_agent(f"client{i}", [task["id"]], data_dir)
        clients = [stack.client_id(f"client{i}") for i in range(agents)]
        stack.ctl("task", "select", task["id"], *clients)
        ctl = [sys.executable, "-m", "fedops_cli.app", "--token-file", str(stack.admin_token_file)]
        subprocess.run([*ctl, "--control", address, "clients", "list"], check=True)
        run = stack.ctl_json("run", "start", task["id"])
        print(f"started {run['id']}; watching live (Ctrl-C stops watching, not the run)")
        subprocess.run([*ctl, "--control", address,
                        "run", "watch", run["id"]], check=True)
        subprocess.run([*ctl, "--control", address,
                        "models", "list", "--task", task["id"]], check=True)
        final = stack.ctl_json("run", "show", run["id"])
        accuracies = [r.get("central_metrics", {}).get("accuracy") for r in final.get("rounds", [])]
        print(f"global accuracy by round: {accuracies}")
        return 0 if final.get("outcome") == "RUN_OUTCOME_COMPLETED" else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
