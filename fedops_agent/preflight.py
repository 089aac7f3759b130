"""Preflight: can this agent run an app? Checked before a run starts, so a missing package or
data path fails StartRun at once, naming the client, instead of crashing a SuperNode mid-round.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version


def check(requirements: list[str], data_path: str, check_data_path: bool) -> list[str]:
    """Problems that would stop the app here (empty: ready); each names what is missing."""
    problems = [problem for text in requirements if (problem := _check_requirement(text))]
    if check_data_path and data_path:
        problems.extend(_check_data_path(data_path))
    return problems


def _check_requirement(text: str) -> str:
    """One requirement against the installed distributions ("" when it is met or does not apply)."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return f"{text}: not a valid requirement"
    if requirement.marker is not None:
        try:
            # No extra is being installed: requirements under an `extra == ...` marker do not apply.
            if not requirement.marker.evaluate({"extra": ""}):
                return ""
        except (UndefinedComparison, UndefinedEnvironmentName) as err:
            return f"{text}: not a valid requirement ({err})"
    # Shown without the marker (which held) and without extras (only the distribution is checked).
    wanted = f"{requirement.name}{requirement.specifier}" + (f" @ {requirement.url}" if requirement.url else "")
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return f"{wanted} (not installed)"
    if not requirement.specifier:
        return ""
    try:
        # Whatever is installed counts, a pre-release included: the app will import that one.
        met = requirement.specifier.contains(Version(installed), prereleases=True)
    except InvalidVersion:
        met = False
    return "" if met else f"{wanted} (installed {installed})"


def _check_data_path(data_path: str) -> list[str]:
    """The agent's data path must exist and be readable (a directory also listable)."""
    path = Path(data_path)
    if not path.exists():
        return [f"data path {data_path} does not exist"]
    mode = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, mode):
        return [f"data path {data_path} is not readable"]
    return []
