"""``python -m fedops_flower.warmapps.superlink SCRIPT ARGS``: Flower's ``flower-superlink ARGS``,
which wakes its ServerApp's Grid when a reply arrives (``gridwake.py``), whose Control and Fleet
middlewares skip the other APIs' requests (``gates.py``), with its imports frozen for the garbage
collector (``fedops_common/heap.py``).

The control service starts every run's SuperLink this way; ``SCRIPT`` (the path of the
``flower-superlink`` console script) stays in the command line, where process scans look for it.
"""

from __future__ import annotations

import sys

from fedops_common import heap
from fedops_flower.warmapps import gates, gridwake


def main(argv: list[str]) -> None:
    """Install the Grid's wake-up and the middleware gates, then run the console script ``argv[0]``
    with the rest."""
    if len(argv) < 1:
        raise SystemExit("usage: python -m fedops_flower.warmapps.superlink SCRIPT [ARGS...]")
    for installed, mark in ((gridwake.install(), gridwake.INSTALLED_MARK), (gates.install(), gates.INSTALLED_MARK)):
        if installed:
            print(mark, file=sys.stderr, flush=True)
    heap.run_frozen(argv[0], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
