"""``python -m fedops_flower.warmapps.superexec ARGS``: Flower's ``flower-superexec ARGS``, whose
ServerApps are forks of a warm template.

The control service starts it beside a run's SuperLink (which then runs with ``--isolation
process``, so that it does not start a SuperExec of its own). A new ``flwr-serverapp`` process
imports Flower, our wrapper and the app's framework before the app's first line runs (about 2 s of
the 3.95 s from ``StartRun`` to the first round in the bench); the template has done that while the
SuperLink waited as a spare.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Install the warm executor for ServerApps, then run Flower's SuperExec with our arguments."""
    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.constant import TaskType

    from fedops_common import heap
    from fedops_flower.warmapps.executor import install

    sys.argv = ["flower-superexec", *sys.argv[1:]]
    install(frozenset({TaskType.SERVER_APP}))  # before Flower's SuperExec starts any thread
    heap.freeze()  # its imports are never garbage (fedops_common.heap)
    flower_superexec()


if __name__ == "__main__":
    main()
