"""The import names of an app's frameworks, from its declared dependencies.

A warm template (``fedops_flower.warmapps``) imports them before a run's first task, so the first
round does not pay for them (torch: about 2 CPU-seconds per process). Agents use it for ClientApp
templates, the control service for ServerApp templates.
"""

from __future__ import annotations

import functools
import importlib.metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# Already in every template (Flower and our wrappers import them), or not a framework of the app.
_NOT_FRAMEWORKS = {"flwr", "fedops-stack", "fedops"}


def framework_imports(requirements: list[str]) -> list[str]:
    """The import names of the installed distributions among ``requirements`` (PEP 508 strings):
    ``torch`` → ``torch``, ``scikit-learn`` → ``sklearn``; the package named as its distribution
    when there is one (torch's wheel also ships ``functorch`` and ``torchgen``). Flower and FedOps
    are left out, and so are unparseable or missing requirements: a preflight reports those.
    The first call in a process reads every installed distribution's metadata (0.3 s here): call it
    off the event loop."""
    by_distribution = _modules_by_distribution()
    names: list[str] = []
    for text in requirements:
        try:
            name = canonicalize_name(Requirement(text).name)
        except InvalidRequirement:
            continue
        if name in _NOT_FRAMEWORKS:
            continue
        modules = list(by_distribution.get(name, ()))
        same = name.replace("-", "_")
        names += [m for m in ([same] if same in modules else sorted(modules)) if m not in names]
    return names


@functools.cache
def _modules_by_distribution() -> dict[str, tuple[str, ...]]:
    """Installed distribution (canonical name) → its top-level modules; read once per process (a
    package installed while the process runs is seen after its restart)."""
    found: dict[str, list[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        if module.isidentifier() and not module.startswith("_"):
            for distribution in distributions:
                found.setdefault(canonicalize_name(distribution), []).append(module)
    return {name: tuple(modules) for name, modules in found.items()}
