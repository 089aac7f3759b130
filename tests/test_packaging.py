"""What the wheel ships: every package of the tree, and the data the runtime reads (index
templates, Kibana objects), so an installed FedOps finds them without the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fedops_common.telemetry.documents import observability_dir

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedops_common", "fedops_control", "fedops_agent", "fedops_flower", "fedops_client", "fedops_cli",
            "fedops_dash")


def test_the_runtime_reads_its_data_from_the_package() -> None:
    assets = observability_dir()
    assert assets.is_relative_to(ROOT / "fedops_common")
    assert (assets / "elk" / "index-templates" / "fedops-logs.json").is_file()
    assert (assets / "elk" / "kibana" / "saved_objects.ndjson").is_file()
    # The repository's observability/elk is the same folder (a link), for users who import by hand.
    assert (ROOT / "observability" / "elk").resolve() == (assets / "elk").resolve()


@pytest.mark.integration
def test_the_wheel_ships_every_package_and_the_telemetry_data(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("fedops_stack-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, package
    templates = {p.name for p in (observability_dir() / "elk" / "index-templates").glob("*.json")}
    assert templates and {f"fedops_common/telemetry/assets/elk/index-templates/{t}" for t in templates} <= names
    assert "fedops_common/telemetry/assets/elk/kibana/saved_objects.ndjson" in names
    assert "fedops_control/state/migrations/versions/0004_observed_apps.py" in names
    assert "fedops_dash/views/run.py" in names  # the dashboard's pages (not a package: package data)
    assert "fedops_dash/entry/app.py" in names  # its main script
