"""Client labels: their syntax, and the ``key=value,key=value`` selector text operators type.

Why here: the control service checks labels (its word is final, INVALID_ARGUMENT naming the field),
the agent checks its own configuration before it starts (exit 2 instead of a refusal at every
reconnect), and ``fedopsctl`` and the dashboard read the same selector text; one syntax for all.

The syntax is Kubernetes' (labels are how fleets are grouped there too, and operators know it):
a key is an optional DNS-subdomain prefix and ``/``, then a name of at most 63 characters of
letters, digits, ``-``, ``_`` and ``.`` that starts and ends with a letter or digit; a value is
empty or follows the name's rule. A selector is equality only, every pair must match (AND).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")  # used with fullmatch ($ admits a newline)
PREFIX = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
MAX_PREFIX_CHARS = 253
MAX_KEY_CHARS = MAX_PREFIX_CHARS + 1 + 63
MAX_VALUE_CHARS = 63
MAX_LABELS = 64  # per client, and per selector
RULES = ("keys: [prefix/]name, name 1-63 letters, digits, '-', '_', '.' starting and ending with a letter or "
         "digit, prefix a lower-case DNS subdomain; values: empty or like a name")


class LabelError(ValueError):
    """A label or selector that breaks the syntax; ``key`` is the label it is about ("" when none)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a label key, or None when it is one."""
    prefix, slash, name = key.rpartition("/")
    if len(key) > MAX_KEY_CHARS or not NAME.fullmatch(name):
        return f"invalid key {key[:80]!r} ({RULES})"
    if slash and (len(prefix) > MAX_PREFIX_CHARS or not PREFIX.fullmatch(prefix)):
        return f"invalid key prefix {prefix[:80]!r} (a lower-case DNS subdomain)"
    return None


def value_problem(value: str) -> str | None:
    """Why ``value`` is not a label value, or None when it is one."""
    if value and (len(value) > MAX_VALUE_CHARS or not NAME.fullmatch(value)):
        return f"invalid value {value[:80]!r} ({RULES})"
    return None


def check_labels(labels: Mapping[str, str]) -> None:
    """Raise LabelError for the first key or value that breaks the syntax, or for too many labels."""
    if len(labels) > MAX_LABELS:
        raise LabelError("", f"at most {MAX_LABELS} labels")
    for key in sorted(labels):
        problem = key_problem(key) or value_problem(labels[key])
        if problem:
            raise LabelError(key, problem)


def check_keys(keys: Iterable[str]) -> None:
    """Raise LabelError for the first string that is not a label key."""
    for key in keys:
        problem = key_problem(key)
        if problem:
            raise LabelError(key, problem)


def parse_pair(text: str, check: bool = True) -> tuple[str, str]:
    """``key=value`` -> (key, value) with surrounding blanks removed. ``check``: the syntax too (tools
    that call the service leave that to it, whose message names the field)."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise LabelError(key, f"expected key=value, got {text[:80]!r}")
    problem = (key_problem(key) or value_problem(value)) if check else None
    if problem:
        raise LabelError(key, problem)
    return key, value


def parse_pairs(texts: Iterable[str], check: bool = True) -> dict[str, str]:
    """Several ``key=value`` (a later one wins over an earlier one of the same key)."""
    return dict(parse_pair(text, check) for text in texts)


def parse_selector(text: str, check: bool = True) -> dict[str, str]:
    """``site=eu,gpu=true`` -> {"site": "eu", "gpu": "true"}; "" -> {} (every client). A key given twice
    with two values could match nothing: refused."""
    selector: dict[str, str] = {}
    for part in (p for p in text.split(",") if p.strip()):
        key, value = parse_pair(part, check)
        if selector.get(key, value) != value:
            raise LabelError(key, f"{key} is given twice with different values: nothing could match")
        selector[key] = value
    if len(selector) > MAX_LABELS:
        raise LabelError("", f"at most {MAX_LABELS} labels in a selector")
    return selector


def format_selector(labels: Mapping[str, str]) -> str:
    """{"site": "eu", "gpu": "true"} -> ``gpu=true,site=eu`` (sorted, so the same selector reads the same)."""
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))
