"""Device facts reported at registration; a stable device id kept in the agent's state dir."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import psutil

from fedops_common import __version__
from fedops_common.proto import common_pb2


def mac_address() -> str:
    """The MAC address Python sees for this host, as aa:bb:cc:dd:ee:ff."""
    node = uuid.getnode()
    return ":".join(f"{(node >> shift) & 0xFF:02x}" for shift in range(40, -1, -8))


def gpu_name() -> str:
    """First NVIDIA GPU's name, or empty."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def stable_device_id(state_dir: Path, override: str = "") -> str:
    """``override``, else the id stored in state_dir (created once from hostname and MAC)."""
    if override:
        return override
    path = state_dir / "device-id"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    device_id = f"{socket.gethostname()[:24]}-{mac_address().replace(':', '')}-{uuid.uuid4().hex[:6]}"
    path.write_text(device_id, encoding="utf-8")
    return device_id


def device_info(device_id: str) -> common_pb2.DeviceInfo:
    """Facts about this device."""
    return common_pb2.DeviceInfo(
        device_id=device_id, hostname=socket.gethostname(), mac=mac_address(),
        os=f"{platform.system()} {platform.release()}", cpu_count=os.cpu_count() or 1,
        ram_bytes=psutil.virtual_memory().total, gpu=gpu_name(), agent_version=__version__)
