"""``python -m fedops_flower.warmapps.superlink SCRIPT ARGS``: Flower's ``flower-superlink ARGS``,
which wakes its ServerApp's Grid when a reply arrives (``gridwake.py``), whose Control and Fleet
middlewares skip the other APIs' requests (``gates.py``), whose in-memory request steps run on its
event loop (``inline.py``; not with ``--database`` a file), with its imports frozen for the garbage
collector (``fedops_common/heap.py``).

The control service starts every run's SuperLink this way; ``SCRIPT`` (the path of the
``flower-superlink`` console script) stays in the command line, where process scans look for it.
"""

from __future__ import annotations

import argparse
import sys

from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME

from fedops_common import heap
from fedops_flower.warmapps import gates, gridwake, inline


def state_in_memory(args: list[str]) -> bool:
    """Whether ``flower-superlink ARGS`` keeps its state in memory (no ``--database``: Flower's
    default). Only that option is read: Flower's own parser would act on ``--help`` and ``--version``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--database", default=FLWR_IN_MEMORY_DB_NAME)
    return bool(parser.parse_known_args(args)[0].database == FLWR_IN_MEMORY_DB_NAME)


def main(argv: list[str]) -> None:
    """Install the Grid's wake-up, the middleware gates and (state in memory) the in-place request
    steps, then run the console script ``argv[0]`` with the rest."""
    if len(argv) < 1:
        raise SystemExit("usage: python -m fedops_flower.warmapps.superlink SCRIPT [ARGS...]")
    hooks = [(gridwake.install(), gridwake.INSTALLED_MARK), (gates.install(), gates.INSTALLED_MARK)]
    if state_in_memory(argv[1:]):
        hooks.append((inline.install(), inline.INSTALLED_MARK))
    for installed, mark in hooks:
        if installed:
            print(mark, file=sys.stderr, flush=True)
    heap.run_frozen(argv[0], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
