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

# What a framework imports only when a model first trains, which a ClientApp template can import
# ahead. torch's first optimizer step imports torch._dynamo (with sympy and mpmath, about 880
# modules: 1.0 s on one idle core here, 2.9 s of each client's first train handler on the 2-core
# VM with three clients), and nothing more after it.
TRAINING_IMPORTS: dict[str, tuple[str, ...]] = {"torch": ("torch._dynamo",)}


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


def training_imports(frameworks: list[str]) -> list[str]:
    """``frameworks`` (import names), each followed by what it imports when a model first trains
    (:data:`TRAINING_IMPORTS`): what a ClientApp template imports before the run's first message."""
    names: list[str] = []
    for name in frameworks:
        names += [m for m in (name, *TRAINING_IMPORTS.get(name, ())) if m not in names]
    return names
