"""Talk to a run's SuperLink over Flower's Control API, in this process.

The same requests `flwr run`, `flwr ls`, `flwr stop` and `flwr supernode register` send, made with
Flower's own HTTP client (:class:`flwr.supercore.control.ControlHttpClient`) and FAB builder. No
`flwr` process is started: each of those costs about a second of interpreter start-up, and a run
start needs one per client plus one more.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.build import build_fab_from_disk
from flwr.common.config import parse_config_args
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import (  # pylint: disable=E0611
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
)
from flwr.proto.run_pb2 import Run  # pylint: disable=E0611
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supercore.runtime_version_compatibility import RuntimeVersionMetadata

from fedops_control.run.launcher import SuperLinkHandle

T = TypeVar("T")
COMPONENT = "flwr CLI"  # the SuperLink checks the caller's runtime version as it does for `flwr`


class FlowerControlError(RuntimeError):
    """A Control API call failed."""


class _RuntimeVersionHeaders:
    """Flower's runtime-version headers, without the exit-on-mismatch of the CLI's interceptor
    (inside a long-running service a mismatch must be an error, not ``sys.exit``)."""

    def __init__(self) -> None:
        self._headers = dict(RuntimeVersionMetadata.from_local_component(COMPONENT).as_metadata())

    def intercept(self, context: Any, call_next: Callable[[Any], httpx.Response]) -> httpx.Response:
        context.request.headers.update(self._headers)
        return call_next(context)


@contextmanager
def _client(handle: SuperLinkHandle) -> Iterator[ControlHttpClient]:
    """A Control API client for the SuperLink's loopback address."""
    address = handle.control_address
    client = ControlHttpClient.from_server_address(
        server_address=address, insecure=handle.ca_file is None,
        root_certificates=handle.root_certificates if handle.ca_file is not None else None,
        interceptors=[_RuntimeVersionHeaders()])
    try:
        yield client
    finally:
        client.close()


async def _call(what: str, handle: SuperLinkHandle, work: Callable[[ControlHttpClient], T]) -> T:
    """Run ``work`` with a client in a worker thread; any failure becomes a FlowerControlError."""
    def run() -> T:
        with _client(handle) as client:
            return work(client)

    try:
        return await asyncio.to_thread(run)
    except (Exception, SystemExit) as err:
        raise FlowerControlError(f"{what} failed: {err}") from err


def ssh_public_key_bytes(openssh: str) -> bytes:
    """The form Flower registers a SuperNode key in, from the agent's OpenSSH public key."""
    key = serialization.load_ssh_public_key(openssh.encode("ascii"))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"not an EC public key: {type(key).__name__}")
    return public_key_to_bytes(key)


async def register_supernode(handle: SuperLinkHandle, public_key: str, name: str) -> int:
    """Admit the SuperNode holding this OpenSSH public key (SuperNode authentication); returns its node id."""
    request = RegisterNodeRequest(public_key=ssh_public_key_bytes(public_key), name=name)
    response = await _call(f"registering SuperNode {name}", handle, lambda c: c.RegisterNode(request=request))
    if not response.node_id:
        raise FlowerControlError(f"the SuperLink did not register SuperNode {name}")
    return int(response.node_id)


def write_overrides(path: Path, values: dict[str, Any]) -> Path:
    """Write run-config overrides as the TOML file `flwr run --run-config` accepts (kept for the record)."""
    path.write_text(tomli_w.dumps(values), encoding="utf-8")
    return path


async def submit_run(handle: SuperLinkHandle, app_dir: Path, overrides_file: Path) -> str:
    """What `flwr run APP --run-config FILE` does: build the FAB and start the run; returns Flower's run id."""
    def start(client: ControlHttpClient) -> str:
        fab_bytes = build_fab_from_disk(app_dir)
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        response = client.StartRun(StartRunRequest(
            fab=fab_to_proto(fab), override_config=user_config_to_proto(parse_config_args([str(overrides_file)])),
            federation=""))
        if not response.HasField("run_id"):
            raise FlowerControlError("the SuperLink started no run")
        return str(response.run_id)

    return await _call("starting the Flower run", handle, start)


async def get_run(handle: SuperLinkHandle, flower_run_id: str) -> Run | None:
    """What `flwr ls --run-id` asks for: Flower's record of the run (None if the SuperLink has none)."""
    try:
        response = await _call("listing the Flower run", handle,
                               lambda c: c.ListRuns(ListRunsRequest(run_id=int(flower_run_id))))
    except FlowerControlError as err:  # the SuperLink answers 404 for a run it does not know
        cause = err.__cause__
        if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 404:
            return None
        raise
    return response.run_dict.get(int(flower_run_id))


def status_text(run: Run | None) -> str:
    """A run's status as `flwr ls` shows it, e.g. ``running`` or ``finished:completed``."""
    if run is None:
        return "unknown"
    status, sub_status = run.status.status, run.status.sub_status
    return f"{status}:{sub_status}" if sub_status else status or "unknown"


def serverapp_seconds(run: Run | None) -> float | None:
    """Flower's own record of the ServerApp: running -> finished seconds, as `flwr ls` shows them;
    None before it finished."""
    if run is None or not run.running_at or not run.finished_at:
        return None
    return (datetime.fromisoformat(run.finished_at) - datetime.fromisoformat(run.running_at)).total_seconds()


async def stop_run(handle: SuperLinkHandle, flower_run_id: str) -> None:
    """What `flwr stop` does: ask the SuperLink to stop the run now."""
    await _call("stopping the Flower run", handle, lambda c: c.StopRun(StopRunRequest(run_id=int(flower_run_id))))
