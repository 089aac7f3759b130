"""The local SuperLink launcher with real processes: direct on loopback, behind the Fleet gateway otherwise."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from fedops_common.proc import pid_alive, scan_processes
from fedops_control.run import flower_control
from fedops_control.run.launcher import (
    CLAIMED_BY,
    ControlRoute,
    LocalProcessLauncher,
    flwr_home_of,
    is_loopback,
    superlink_database,
)

pytestmark = pytest.mark.integration  # real servers or processes, no FL run
CONTROL = ControlRoute("127.0.0.1:50051")  # the local launcher passes it on to the ServerApp unchanged


def test_loopback_names() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "control.example.org"))


def _group(workdir: Path) -> list[int]:
    """Processes that name ``workdir`` or run with their FLWR_HOME in it (the SuperLink, its SuperExec
    and what that started), or in the spare directory it links to."""
    homes = {workdir.resolve(), (workdir / "superlink").resolve().parent}
    return [pid for pid, proc, cmdline in scan_processes()
            if str(workdir).encode() in cmdline
            or any((home := flwr_home_of(proc)) is not None and home.is_relative_to(h) for h in homes)]


def test_superlink_state_in_memory_unless_on_disk(tmp_path: Path) -> None:
    """Flower's in-memory state by default; a SQLite file in the SuperLink's home when asked for."""
    assert superlink_database(tmp_path, on_disk=False) == ":flwr-in-memory:"
    assert superlink_database(tmp_path, on_disk=True) == str(tmp_path / "state.db")


def test_flwr_home_of_reads_a_live_process_environment(tmp_path: Path) -> None:
    home = tmp_path / "link-target"
    home.mkdir()
    (tmp_path / "link").symlink_to(home)
    child = subprocess.Popen(["sleep", "30"], env={**os.environ, "FLWR_HOME": str(tmp_path / "link")})
    plain = subprocess.Popen(["sleep", "30"], env={k: v for k, v in os.environ.items() if k != "FLWR_HOME"})
    try:
        assert flwr_home_of(Path(f"/proc/{child.pid}")) == home  # resolved
        assert flwr_home_of(Path(f"/proc/{plain.pid}")) is None
        assert flwr_home_of(tmp_path / "no-such-process") is None
    finally:
        child.kill()
        plain.kill()


@pytest.mark.parametrize(("bind_host", "warm_apps"), [("127.0.0.1", False), ("0.0.0.0", False), ("127.0.0.1", True)])
def test_start_adopt_and_stop(tmp_path: Path, bind_host: str, warm_apps: bool) -> None:
    """A launched SuperLink is found again by a fresh launcher (a restarted control service), which
    stops it and everything it started; behind the gateway only the Fleet API answers."""
    workdir = tmp_path / "run-1"
    launcher = LocalProcessLauncher(bind_host=bind_host, warm_apps=warm_apps)
    handle = asyncio.run(launcher.start("run-1", workdir, CONTROL))
    try:
        port = int(handle.address.rsplit(":", 1)[1])
        internal = int(handle.control_address.rsplit(":", 1)[1])
        assert (port != internal) == (bind_host == "0.0.0.0")
        if bind_host == "0.0.0.0":
            socket.create_connection(("127.0.0.2", port), timeout=5).close()  # every interface
            refused = httpx.post(f"http://127.0.0.1:{port}/v1/control/list-runs", content=b"", timeout=10)
            assert refused.status_code == 404 and "only the Fleet API" in refused.text
            fleet = httpx.post(f"http://127.0.0.1:{port}/v1/fleet/get-run", content=b"", timeout=10)
            assert "only the Fleet API" not in fleet.text  # reached the SuperLink
        # The Control API answers the control service on loopback (what the watchdog asks).
        assert flower_control.status_text(asyncio.run(flower_control.get_run(handle, "12345"))) == "unknown"
        # Flower starts the SuperLink's SuperExec in a session of its own (with the ServerApp template
        # under it): a stop ends them too, at once.
        superexec = wait_for_superexec(handle.process.pid, warm_apps)
        assert os.getpgid(superexec[0]) != handle.process.pid
        assert handle.process.pid in _group(workdir) and set(superexec) <= set(_group(workdir))
        adopted = LocalProcessLauncher(bind_host=bind_host).adopt("run-1", workdir, handle.address)
        assert adopted is not None
        assert adopted.pid == handle.process.pid  # the group leader
        assert adopted.control_address == handle.control_address
        assert LocalProcessLauncher().adopt("run-2", tmp_path / "run-2", handle.address) is None
        asyncio.run(launcher.stop(adopted))
        assert not pid_alive(handle.process.pid) or handle.process.poll() is not None
        assert _group(workdir) == []
        assert not any(map(pid_alive, superexec))
    finally:
        asyncio.run(launcher.stop(handle))


def test_state_on_disk_keeps_a_sqlite_file_and_is_adopted(tmp_path: Path) -> None:
    """``--superlink-state-on-disk``: the SuperLink's state is a SQLite file in its home; found again
    (by its FLWR_HOME) and stopped like an in-memory one."""
    workdir = tmp_path / "run-1"
    launcher = LocalProcessLauncher(state_on_disk=True)
    handle = asyncio.run(launcher.start("run-1", workdir, CONTROL))
    try:
        assert handle.process is not None
        assert (workdir / "superlink" / "state.db").exists()
        adopted = LocalProcessLauncher().adopt("run-1", workdir, handle.address)
        assert adopted is not None and adopted.pid == handle.process.pid
        asyncio.run(launcher.stop(adopted))
        assert _group(workdir) == []
    finally:
        asyncio.run(launcher.stop(handle))


def wait_for_superexec(leader: int, warm_apps: bool, timeout_s: float = 30) -> list[int]:
    """The pids of the SuperExec that the SuperLink (``leader`` or its child) started once it served,
    and with warm apps of the ServerApp template that SuperExec started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [child.pid for child in psutil.Process(leader).children(recursive=True)
                 if "superexec" in " ".join(child.cmdline())]
        if found and warm_apps:
            found += [child.pid for child in psutil.Process(found[0]).children(recursive=True)]
        if len(found) >= (2 if warm_apps else 1):
            return found
        time.sleep(0.1)
    raise AssertionError(f"no SuperExec (and template) under {leader} within {timeout_s} s")


def test_warm_spare_is_taken_by_the_next_run_and_replaced(tmp_path: Path) -> None:
    """The spare started by open() becomes the next run's SuperLink (linked into its workdir, found
    again by adopt); stopping it warms a new spare; close() stops the unclaimed one and removes it."""
    spares = tmp_path / "superlinks"

    async def scenario() -> None:
        launcher = LocalProcessLauncher(spare_dir=spares)
        await launcher.open()
        spare = await launcher._spare  # the test waits for it; a run just takes it when it comes
        assert spare is not None and spare.process is not None
        workdir = tmp_path / "runs" / "run-1"
        handle = await launcher.start("run-1", workdir, CONTROL)
        assert handle.process is spare.process and handle.run_id == "run-1"
        assert (workdir / "superlink").resolve() == spare.flwr_home
        assert (spare.flwr_home.parent / CLAIMED_BY).read_text() == "run-1"
        assert (workdir / "superlink.log").exists()
        adopted = LocalProcessLauncher(spare_dir=spares).adopt("run-1", workdir, handle.address)
        assert adopted is not None and adopted.pid == handle.process.pid
        assert flower_control.status_text(await flower_control.get_run(handle, "1")) == "unknown"
        assert handle.process.pid in _group(spare.flwr_home.parent)
        await launcher.stop(handle)
        assert not pid_alive(handle.process.pid) and _group(spare.flwr_home.parent) == []
        assert launcher._spare is not None  # the next one warms up once a run's SuperLink is gone
        replacement = await launcher._spare
        assert replacement.process is not None and replacement.process.poll() is None
        await launcher.close()
        assert replacement.process.poll() is not None and _group(replacement.flwr_home.parent) == []
        assert not replacement.flwr_home.parent.exists()  # unclaimed: nothing to keep
        assert spare.flwr_home.parent.exists()            # the run's: its log stays

    asyncio.run(scenario())


def test_open_stops_spares_left_by_a_crashed_service(tmp_path: Path) -> None:
    """A spare whose control service died unclaimed is stopped and removed by the next open()."""
    spares = tmp_path / "superlinks"

    async def scenario() -> None:
        crashed = LocalProcessLauncher(spare_dir=spares)
        await crashed.open()
        left = await crashed._spare
        assert left.process is not None and _group(left.flwr_home.parent)
        successor = LocalProcessLauncher(spare_dir=spares)
        await successor.open()
        assert left.process.wait(timeout=10) is not None and _group(left.flwr_home.parent) == []
        assert not left.flwr_home.parent.exists()
        fresh = await successor._spare
        assert fresh.process is not None and fresh.process.poll() is None
        await successor.close()
        assert _group(spares) == []

    asyncio.run(scenario())
