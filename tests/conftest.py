"""Shared fixtures: the digits example's data, and local stacks of real processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGITS_APP = ROOT / "examples" / "digits"
sys.path.insert(0, str(DIGITS_APP))


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three non-IID partitions of scikit-learn's digits."""
    from digits_app.task import write_partitions

    root = tmp_path_factory.mktemp("digits-data")
    dirs = [root / f"client{i}" for i in range(3)]
    write_partitions(dirs)
    return dirs
