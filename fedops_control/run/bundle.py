"""Build the app FedOps submits: a copy of the user's Flower app with observed components.

The user's files are copied untouched; only the copy's ``pyproject.toml`` changes, so the
components point at our wrappers and the run config carries FedOps' own keys.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fedops_common import runconfig as keys
from fedops_control.errors import InvalidArgument

SERVER_WRAPPER = "fedops_flower.serverapp.app:app"
CLIENT_WRAPPER = "fedops_flower.clientapp.app:app"
IGNORED = shutil.ignore_patterns(".git", "__pycache__", ".venv", "*.fab", ".pytest_cache")


def fetch_app(app: dict[str, Any], workdir: Path) -> Path:
    """Return the directory of the task's app: the local path, or a fresh git checkout."""
    if "local_path" in app:
        return Path(app["local_path"]).expanduser().resolve()
    git = app["git"]
    checkout = workdir / "source"
    # init + fetch of the one ref works for branches, tags and commit ids alike (clone --branch does not
    # take a commit id), and fetches one commit only.
    steps = [["git", "init", "--quiet", str(checkout)],
             ["git", "-C", str(checkout), "fetch", "--quiet", "--depth", "1", git["url"], git["ref"] or "main"],
             ["git", "-C", str(checkout), "checkout", "--quiet", "FETCH_HEAD"]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise InvalidArgument("app.git", f"git {step[3] if step[1] == '-C' else step[1]} failed: "
                                             f"{result.stderr.strip()[:500]}")
    app_dir = (checkout / (git.get("subdirectory") or "")).resolve()
    if not app_dir.is_relative_to(checkout.resolve()) or not (app_dir / "pyproject.toml").is_file():
        raise InvalidArgument("app.git.subdirectory", f"no Flower app (pyproject.toml) at {git.get('subdirectory')!r}")
    return app_dir


def build_bundle(source: Path, target: Path, fedops_config: dict[str, Any]) -> dict[str, Any]:
    """Copy ``source`` to ``target`` with observed components; returns the app's own config."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=IGNORED)
    pyproject = target / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    app = data["tool"]["flwr"]["app"]
    components = app["components"]
    app_config = dict(app.get("config", {}))
    fedops_config = {**fedops_config, keys.INNER_SERVERAPP: components["serverapp"],
                     keys.INNER_CLIENTAPP: components["clientapp"]}
    components["serverapp"] = SERVER_WRAPPER
    components["clientapp"] = CLIENT_WRAPPER
    app["config"] = {**app_config, **fedops_config}
    # The observed copy must not pull a different flwr at run time.
    data.pop("build-system", None)
    pyproject.write_text(tomli_w.dumps(data), encoding="utf-8")
    return app_config
