"""Warm app processes: Flower's SuperExec starts each ClientApp task as a fork of a per-run template
that has already imported Flower, our wrapper, the app and its framework, instead of a new
``flwr-clientapp`` process that imports all of it again (see ``executor.py`` for the numbers)."""
