"""A run's SuperExec with ServerApps forked from a warm template (the control service's
``--warm-apps``).

Without it, each ServerApp is a new ``flwr-serverapp`` process that imports Flower, our wrapper and
the app's framework before the app's first line. ``flower-superlink`` starts its SuperExec itself,
by the name ``flower-superexec`` on its ``PATH``, with the right Runtime API address, TLS and
``--parent-pid``. With warm apps, that name is first found in the run's own ``bin/``, as a script
that runs ``fedops_flower.warmapps.superexec`` (Flower's SuperExec, ServerApps forked from a
template) with the same arguments: it is still the SuperLink's child, in its process group, and
stops with it. The template imports ``frameworks`` (recent runs' app dependencies) while the
SuperLink waits as a spare, so the next run's ServerApp starts with them in memory.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from fedops_common import runconfig as keys

MODULE = "fedops_flower.warmapps.superexec"


def warm_superexec_env(env: dict[str, str], workdir: Path, frameworks: list[str]) -> dict[str, str]:
    """``env`` (a SuperLink's) with ``workdir/bin/flower-superexec`` first on its PATH and the
    frameworks its ServerApp template imports."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "flower-superexec"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m {MODULE} \"$@\"\n")
    script.chmod(0o755)
    env = {**env, "PATH": os.pathsep.join([str(bin_dir), env.get("PATH", "")])}
    if frameworks:
        env[keys.WARM_IMPORTS_ENV] = ",".join(frameworks)
    return env
