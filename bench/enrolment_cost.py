"""The cost of one registration: the Register transaction in process, and the service's CPU per Register.

Two measurements, both with auth on and a one-time enrolment token per device (the fleet's case):

1. **Transaction** (in this process, no gRPC): the database work of ``Register`` on a SQLite file (or
   ``--database-url``), for N new devices that enrol with a token, then the same N devices
   registering again with their credentials (what every agent does after a reconnect). Reported: ms
   per registration (wall and this process's CPU: on a shared machine the CPU time is the steadier
   figure) and SQL statements per registration (cursor executions, commits counted apart).
   With the group commit of this code, also N enrolments committed ``--batch`` at a time.
2. **Service** (``--service``): a real control service process (pinned with ``--pin``) and this process
   calling ``Register`` over gRPC with ``--concurrency`` calls in flight: N enrolments, then N
   re-registrations. Reported: registrations per second, client p50/p99, and the service's own
   CPU time per registration (``psutil``, user + system), which is what decides how many
   registrations one core can do (500/s needs at most 2 ms).

    python bench/enrolment_cost.py --devices 2000 [--service --pin 0] [--database-url postgresql://...]

Before/after: run this same file with ``PYTHONPATH`` pointing at a checkout of the older code; the
script then leaves ``sys.path`` alone (without ``PYTHONPATH`` it adds this repository). Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402 - imported once sys.path holds the code to measure
import psutil  # noqa: E402
from fleet_load import Control, p, seed  # noqa: E402 - this directory's, whatever checkout PYTHONPATH names
from sqlalchemy import event  # noqa: E402

from fedops_common.grpc_channel import CHANNEL_OPTIONS  # noqa: E402
from fedops_common.proto import agent_pb2, agent_pb2_grpc, common_pb2  # noqa: E402
from fedops_control.access.interceptor import AccessControl  # noqa: E402
from fedops_control.access.tokens import Identity, TokenStore  # noqa: E402
from fedops_control.state.db import open_database, sqlite_url  # noqa: E402

LABELS = {"site": "bench"}  # the agent's configured labels travel with every registration


def request(i: int, token: str = "") -> agent_pb2.RegisterRequest:
    """What a fleet agent sends: device facts, data path, its labels, and a token when it has no credential."""
    return agent_pb2.RegisterRequest(
        device=common_pb2.DeviceInfo(device_id=f"bench-{i:05d}", hostname=f"bench-{i:05d}", os="linux"),
        data_path="/data", labels=LABELS, enrolment_tokens=[token] if token else [])


class Counter:
    """Statements and commits on an engine (SQLAlchemy events)."""

    def __init__(self, engine: Any) -> None:
        self.statements = self.commits = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, *_args: Any) -> None:
        self.statements += 1

    def _commit(self, *_args: Any) -> None:
        self.commits += 1


def registrar(sessions: Any, tokens: TokenStore) -> tuple[Callable[[list[tuple[agent_pb2.RegisterRequest,
                                                                                  Identity | None]]], list[str]], str]:
    """A function that runs the Register transaction for a list of (request, identity) and returns the
    credentials; and which code it is ("group commit" when this code has it)."""
    try:
        from fedops_control.agents.enrolment import Registrar, Registration
        from fedops_control.server.agent_servicer import client_id_for
    except ImportError:
        return _orm_registrar(sessions, tokens), "ORM, one transaction per registration"
    new = Registrar(sessions, tokens)

    def commit(items: list[tuple[agent_pb2.RegisterRequest, Identity | None]]) -> list[str]:
        results = new.commit([Registration.of(r, client_id_for(r.device.device_id), identity, secure=True)
                              for r, identity in items])
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [result.credential for result in results]  # type: ignore[union-attr]
    return commit, "Core, group commit"


def _orm_registrar(sessions: Any, tokens: TokenStore) -> Callable[..., list[str]]:
    """The code before the group commit: AgentServicer._register, one ORM transaction each."""
    from fedops_control.agents.sessions import AgentSessions
    from fedops_control.server.agent_servicer import AgentServicer, client_id_for

    servicer = AgentServicer(sessions, AgentSessions(), None, AccessControl(tokens), None, None)  # type: ignore[arg-type]

    def commit(items: list[tuple[agent_pb2.RegisterRequest, Identity | None]]) -> list[str]:
        out = []
        for r, identity in items:
            facts = {f.name: getattr(r.device, f.name) for f in r.device.DESCRIPTOR.fields}
            credential, _tasks = servicer._register(r, client_id_for(r.device.device_id), facts, identity, True, None)
            out.append(credential)
        return out
    return commit


def transaction(devices: int, batch: int, database_url: str) -> dict[str, Any]:
    """Part 1: the Register transaction in this process."""
    data_dir = Path(tempfile.mkdtemp(prefix="fedops-enrol-"))
    url = database_url or sqlite_url(data_dir / "control.db")
    secrets_, _run = seed(url, 2 * devices)
    sessions = open_database(url)
    tokens = TokenStore(sessions)
    commit, code = registrar(sessions, tokens)
    counter = Counter(sessions.kw["bind"])
    out: dict[str, Any] = {"code": code, "devices": devices, "database": "postgresql" if database_url else "sqlite"}

    def timed(name: str, items: list[tuple[agent_pb2.RegisterRequest, Identity | None]], size: int) -> list[str]:
        statements, commits = counter.statements, counter.commits
        credentials: list[str] = []
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(items), size):
            credentials += commit(items[first:first + size])
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        out[f"{name}_ms"] = round(1000 * elapsed / len(items), 3)
        out[f"{name}_cpu_ms"] = round(1000 * cpu / len(items), 3)
        out[f"{name}_statements"] = round((counter.statements - statements) / len(items), 2)
        out[f"{name}_commits"] = round((counter.commits - commits) / len(items), 3)
        return credentials

    credentials = timed("enrol_one_at_a_time", [(request(i, secrets_[i]), None) for i in range(devices)], 1)
    identities = [tokens.resolve(c) for c in credentials]  # the interceptor resolved them (cached)
    timed("reregister_one_at_a_time", [(request(i), identities[i]) for i in range(devices)], 1)
    if batch > 1 and "group" in code:
        timed(f"enrol_batches_of_{batch}",
              [(request(devices + i, secrets_[devices + i]), None) for i in range(devices)], batch)
        timed(f"reregister_batches_of_{batch}", [(request(i), identities[i]) for i in range(devices)], batch)
    sessions.kw["bind"].dispose()
    return out


async def service(devices: int, concurrency: int, pin: str, database_url: str, log_level: str) -> dict[str, Any]:
    """Part 2: a real control service process, Register over gRPC, the service's CPU per call."""
    data_dir = Path(tempfile.mkdtemp(prefix="fedops-enrol-service-"))
    url = database_url or sqlite_url(data_dir / "control.db")
    secrets_, _run = seed(url, devices)
    control = Control(data_dir, database_url, pin, ["--log-level", log_level])
    control.start()
    process = psutil.Process(control.proc.pid if control.proc else 0)
    out: dict[str, Any] = {"concurrency": concurrency, "pin": pin, "log_level": log_level}
    credentials: dict[int, str] = {}
    channels = [grpc.aio.insecure_channel(control.address, options=CHANNEL_OPTIONS)
                for _ in range(max(1, concurrency // 16))]
    try:
        for phase in ("enrol", "reregister"):
            out[phase] = await _calls(phase, channels, concurrency, devices, secrets_, credentials, process)
    finally:
        for channel in channels:
            await channel.close()
        control.stop()
    return out


async def _calls(phase: str, channels: list[grpc.aio.Channel], concurrency: int, devices: int, secrets_: list[str],
                 credentials: dict[int, str], process: psutil.Process) -> dict[str, Any]:
    """Every device registers once ("enrol": with its token; "reregister": with its credential)."""
    todo = list(range(devices))
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def worker(w: int) -> None:
        stub = agent_pb2_grpc.AgentServiceStub(channels[w % len(channels)])
        while todo:
            i = todo.pop()
            credential = credentials.get(i, "") if phase == "reregister" else ""
            metadata = (("authorization", f"Bearer {credential}"),) if credential else None
            started = time.perf_counter()
            try:
                response = await stub.Register(request(i, "" if credential else secrets_[i]), metadata=metadata,
                                               timeout=30)
            except grpc.RpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)
            if response.credential:
                credentials[i] = response.credential

    cpu = process.cpu_times()
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    used = process.cpu_times()
    cpu_s = used.user + used.system - cpu.user - cpu.system
    return {"per_s": round(len(latencies) / elapsed, 1), "p50_ms": p(latencies, 50), "p99_ms": p(latencies, 99),
            "service_cpu_ms_per_call": round(1000 * cpu_s / devices, 3),
            "service_cpu_pct": round(100 * cpu_s / elapsed), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64, help="registrations per transaction in the batched rows")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--service", action="store_true", help="also measure a real control service over gRPC")
    parser.add_argument("--concurrency", type=int, default=64, help="Register calls in flight (--service)")
    parser.add_argument("--pin", default="", help="taskset CPU list for the control service (--service)")
    parser.add_argument("--log-level", default="WARNING",
                        help="the service's (--service; WARNING as in fleet_load.py, INFO is its default)")
    parser.add_argument("--no-transaction", action="store_true", help="skip the in-process measurement")
    args = parser.parse_args()
    if args.database_url and args.service and not args.no_transaction:
        parser.error("--database-url with --service: each measurement needs an empty database; run the "
                     "transaction and the service apart (--no-transaction for the service), each on a new database")
    result: dict[str, Any] = {"load_average_1min": round(os.getloadavg()[0], 2)}
    if not args.no_transaction:
        result["transaction"] = transaction(args.devices, args.batch, args.database_url)
    if args.service:
        result["service"] = asyncio.run(service(args.devices, args.concurrency, args.pin, args.database_url,
                                                   args.log_level))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
