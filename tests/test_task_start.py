"""What a forked task no longer repeats: the FAB's unpacking and checks (``warmapps/fabcache.py``)
and Flower's switched-off telemetry events (``warmapps/flowerevents.py``). Real Flower functions
where they can run here; every warm-apps run exercises both (``test_warm_apps``)."""

from __future__ import annotations

import hashlib
import importlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fedops_flower.warmapps import fabcache, flowerevents

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinyapp"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "fedops"

[tool.flwr.app.components]
serverapp = "tinyapp.server:app"
clientapp = "tinyapp.client:app"

[tool.flwr.app.config]
num-server-rounds = 1
"""


def fab_bytes(tampered: bool = False) -> bytes:
    """A FAB as ``flwr build`` writes one: the files and a CONTENT manifest of their hashes (a
    ``tampered`` one ships a client module other than the one its manifest hashed)."""
    files = {"pyproject.toml": PYPROJECT.encode(), "tinyapp/__init__.py": b"",
             "tinyapp/client.py": b"app = None\n", "tinyapp/server.py": b"app = None\n"}
    manifest = "".join(f"{name},{hashlib.sha256(data).hexdigest()},{len(data) * 8}\n" for name, data in files.items())
    if tampered:
        files["tinyapp/client.py"] = b"app = 666\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(".info/CONTENT", manifest)
    return buffer.getvalue()


class CountingInstall:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls = 0

    def __call__(self, fab_file: Any, install_dir: Path | None = None, skip_prompt: bool = False) -> Path:
        self.calls += 1
        path = self.root / "apps" / f"app-{self.calls}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def test_the_same_fab_is_installed_once_while_its_directory_is_there(tmp_path: Path) -> None:
    real = CountingInstall(tmp_path)
    install = fabcache.once(real, lambda: tmp_path, "apps")
    first = install(b"fab one", skip_prompt=True)
    assert install(b"fab one", skip_prompt=True) == first and real.calls == 1
    assert install(b"fab two", skip_prompt=True) != first and real.calls == 2  # other bytes, other app
    first.rmdir()  # removed since: installed again, as Flower would
    assert install(b"fab one", skip_prompt=True).is_dir() and real.calls == 3


def test_calls_it_was_not_written_for_go_to_flower(tmp_path: Path) -> None:
    real = CountingInstall(tmp_path)
    install = fabcache.once(real, lambda: tmp_path, "apps")
    for _ in range(2):
        install(b"fab", skip_prompt=False)  # Flower would prompt
        install(b"fab", tmp_path / "elsewhere", True)  # an explicit directory
        install(tmp_path / "app.fab", None, True)  # a path
    assert real.calls == 6


def test_flowers_install_is_wrapped_where_its_runtimes_call_it(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With Flower's real ``install_from_fab``: the second task's call finds the first's directory."""

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    modules = [importlib.import_module(name) for name in fabcache.CALLERS]
    for module in modules:
        monkeypatch.setattr(module, "install_from_fab", module.install_from_fab)  # restored afterwards
    assert fabcache.install()
    fab = fab_bytes()
    installed = modules[0].install_from_fab(fab, skip_prompt=True)
    assert (installed / "tinyapp" / "client.py").read_text() == "app = None\n"
    assert installed.name.startswith("fedops.tinyapp.1.0.0.")
    mark = tmp_path / "apps" / fabcache.MARKS_DIR / hashlib.sha256(fab).hexdigest()
    assert mark.read_text() == str(installed)
    (installed / "tinyapp" / "client.py").write_text("changed\n")  # proves the second call did not unpack
    assert modules[1].install_from_fab(fab, skip_prompt=True) == installed
    assert (installed / "tinyapp" / "client.py").read_text() == "changed\n"
    with pytest.raises(Exception, match="hashes"):  # a FAB whose content does not match: Flower refuses it
        modules[0].install_from_fab(fab_bytes(tampered=True), skip_prompt=True)


def test_switched_off_telemetry_answers_at_once_in_every_runtime(monkeypatch: pytest.MonkeyPatch) -> None:

    modules = [importlib.import_module(name) for name in flowerevents.CALLERS]
    for module in modules:
        monkeypatch.setattr(module, "event", module.event)
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_TELEMETRY_LOGGING", "0")
    assert flowerevents.install()
    assert all(module.event is flowerevents.disabled_event for module in modules)
    from flwr.supercore import telemetry

    # What Flower's own event resolves to with telemetry off (its create_event's last line).
    assert modules[0].event(telemetry.EventType.FLWR_CLIENTAPP_RUN_ENTER).result(0) == "disabled"
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "0")  # read once, at Flower's import
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_LOGGING", "0")
    assert telemetry.create_event(telemetry.EventType.FLWR_CLIENTAPP_RUN_ENTER, None) == "disabled"


@pytest.mark.parametrize(("enabled", "logging"), [("1", "0"), ("0", "1")])
def test_telemetry_on_or_logged_is_left_to_flower(monkeypatch: pytest.MonkeyPatch, enabled: str, logging: str) -> None:

    module = importlib.import_module(flowerevents.CALLERS[0])
    before = module.event
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", enabled)
    monkeypatch.setenv("FLWR_TELEMETRY_LOGGING", logging)
    assert flowerevents.install() is False
    assert module.event is before


def test_a_seam_is_replaced_in_every_module_or_in_none() -> None:
    from fedops_flower.warmapps import seams

    module = importlib.import_module(fabcache.CALLERS[0])
    before = module.install_from_fab
    assert seams.replace((fabcache.CALLERS[0], "no.such.module"), "install_from_fab", lambda f: f) is False
    assert seams.replace((fabcache.CALLERS[0], "json"), "install_from_fab", lambda f: f) is False  # no such name
    assert module.install_from_fab is before
