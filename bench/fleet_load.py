"""Fleet scale: N simulated agents against one real control service, speaking the real agent protocol.

Each simulated agent does what ``fedops_agent/daemon.py`` does: ``Register`` with a one-time
enrolment token (auth on), keeps the credential, opens the ``Session`` stream (status first, then a
heartbeat every interval) and, when the session or a registration fails, retries with the agent's own
jittered exponential backoff (``fedops_agent.daemon.RECONNECT_WAIT`` where it exists). An operator probe
measures GetClient, GetRun, the gRPC health check and a page of 100 clients while the fleet holds
its sessions; ``--restart`` then restarts the control service and times the reconnect storm.

The control service runs as its own process (``taskset -c 0`` with ``--pin``); this generator should
run on the other core (``taskset -c 1 python bench/fleet_load.py ...``). Setup (the task, the
tokens, one finished run for GetRun) is written to the database before the service starts and is
not measured. Prints one JSON object (and appends it to ``--out`` when given).

    python bench/fleet_load.py --agents 1000 --hold 60 [--database-url postgresql://...] [--restart]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedops_common.grpc_channel import CHANNEL_OPTIONS
from fedops_common.proto import access_pb2, agent_pb2, agent_pb2_grpc, common_pb2, control_pb2, control_pb2_grpc
from fedops_control.access.tokens import TokenStore
from fedops_control.state.db import open_database, sqlite_url
from fedops_control.state.models import RunRow, TaskRow

S = common_pb2
ADMIN = "fop_bench-admin-token-0123456789"
AGENTS_PER_CHANNEL = 100  # agents share HTTP/2 connections: one process cannot open 10,000 sockets cheaply


def reconnect_wait() -> Any:
    """The real agent's reconnect backoff (jittered exponential); a plain one for older code."""
    try:
        from fedops_agent.daemon import RECONNECT_WAIT
        return RECONNECT_WAIT
    except ImportError:
        from tenacity import wait_exponential
        return wait_exponential(multiplier=0.5, max=15)


def p(values: list[float], q: float) -> float:
    """Percentile ``q`` (0..100) of ``values`` in ms, rounded; -1 when empty."""
    if not values:
        return -1
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 1)


@dataclass
class Stats:
    register_s: list[float] = field(default_factory=list)
    register_errors: dict[str, int] = field(default_factory=dict)
    registered_at: list[float] = field(default_factory=list)
    in_session: set[int] = field(default_factory=set)
    disconnects: int = 0
    heartbeats: int = 0
    probes: dict[str, list[float]] = field(default_factory=dict)
    probe_errors: dict[str, int] = field(default_factory=dict)


class Fleet:
    def __init__(self, address: str, tokens: list[str], stats: Stats, heartbeat_s: float) -> None:
        self.address, self.tokens, self.stats, self.heartbeat_s = address, tokens, stats, heartbeat_s
        self.interval_s = heartbeat_s or 2.0
        self.channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
                         for _ in range(len(tokens) // AGENTS_PER_CHANNEL + 1)]
        self.credentials: dict[int, str] = {}
        self.client_ids: dict[int, str] = {}
        self.hung: set[int] = set()  # agents that keep their session but send no more heartbeats
        self.stopping = False
        self.retired: list[grpc.aio.Channel] = []

    async def repoint(self, address: str) -> None:
        """Point the agents at a restarted control service (a new port)."""
        # The old channels are closed only at the end: closing one cancels its calls (CancelledError),
        # while a real agent sees its calls to a stopped service fail (UNAVAILABLE) and retries.
        self.retired += self.channels
        self.address = address
        self.channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in self.channels]

    async def agent(self, i: int) -> None:
        wait, attempt = reconnect_wait(), 0
        while not self.stopping:
            stub = agent_pb2_grpc.AgentServiceStub(self.channels[i % len(self.channels)])  # repoint() replaces them
            try:
                client_id = await self._register(stub, i)
                attempt = 0
                await self._session(stub, i, client_id)
            except grpc.RpcError:
                pass
            self.stats.in_session.discard(i)
            while i in self.hung and not self.stopping:  # a hung agent does not reconnect either
                await asyncio.sleep(0.2)
            if self.stopping:
                return
            attempt += 1
            await asyncio.sleep(wait(_RetryState(attempt)))

    async def _register(self, stub: Any, i: int) -> str:
        credential = self.credentials.get(i)
        request = agent_pb2.RegisterRequest(device=common_pb2.DeviceInfo(device_id=f"bench-{i:05d}",
                                                                          hostname=f"bench-{i:05d}", os="linux"),
                                            data_path="/data", enrolment_tokens=[] if credential else [self.tokens[i]])
        metadata = (("authorization", f"Bearer {credential}"),) if credential else None
        started = time.perf_counter()
        try:
            response = await stub.Register(request, timeout=10, metadata=metadata)
        except grpc.RpcError as err:
            name = err.code().name
            self.stats.register_errors[name] = self.stats.register_errors.get(name, 0) + 1
            raise
        self.stats.register_s.append(time.perf_counter() - started)
        self.stats.registered_at.append(time.monotonic())
        if response.credential:
            self.credentials[i] = response.credential
        self.client_ids[i] = response.client_id
        self.interval_s = self.heartbeat_s or float(response.heartbeat_interval_s or 2)  # as the agent does
        return response.client_id

    async def _session(self, stub: Any, i: int, client_id: str) -> None:
        outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        outbox.put_nowait(agent_pb2.AgentMessage(client_id=client_id, status=agent_pb2.StatusChange(
            state=S.CLIENT_STATE_ONLINE, reason="session opened")))

        async def outgoing() -> Any:
            while True:
                yield await outbox.get()

        async def heartbeats() -> None:
            await asyncio.sleep(random.uniform(0, self.interval_s))
            while i not in self.hung:
                outbox.put_nowait(agent_pb2.AgentMessage(client_id=client_id, heartbeat=agent_pb2.Heartbeat(
                    cpu_percent=10.0, memory_percent=20.0)))
                self.stats.heartbeats += 1
                await asyncio.sleep(self.interval_s)

        call = stub.Session(outgoing(), metadata=(("authorization", f"Bearer {self.credentials[i]}"),))
        beat = asyncio.create_task(heartbeats())
        self.stats.in_session.add(i)
        try:
            async for _command in call:
                pass
        finally:
            beat.cancel()
            call.cancel()
            if not self.stopping:
                self.stats.disconnects += 1

    async def close(self) -> None:
        self.stopping = True
        for channel in self.channels + self.retired:
            await channel.close(grace=None)


@dataclass
class _RetryState:
    """What tenacity's wait strategies read."""

    attempt_number: int


async def probe(address: str, run_id: str, client_ids: list[str], seconds: float,
                operator_nice: int = 0) -> dict[str, Any]:
    """An operator in its own process (so the fleet's event loop does not delay its calls): GetClient,
    GetRun, health and a page of 100 clients, in turn. Returns the latencies (ms percentiles).

    ``operator_nice`` < 0 runs it at a higher CPU priority: on the 2-core bench machine it shares the
    generator's saturated core, whose run queue would otherwise count in its latencies; an operator's
    terminal is another machine."""
    return await asyncio.to_thread(_probe_process, address, run_id, client_ids, seconds, operator_nice)


def _probe_process(address: str, run_id: str, client_ids: list[str], seconds: float,
                   operator_nice: int) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_probe_main, (address, run_id, client_ids, seconds, operator_nice))


def _probe_main(address: str, run_id: str, client_ids: list[str], seconds: float,
                operator_nice: int = 0) -> dict[str, Any]:
    if operator_nice:
        os.nice(operator_nice)  # PermissionError when not allowed: the bench stops and says so
    stats = Stats()
    asyncio.run(_probe(address, stats, run_id, client_ids, time.monotonic() + seconds))
    return {**{f"{name}_p99_ms": p(values, 99) for name, values in stats.probes.items()},
            **{f"{name}_p50_ms": p(values, 50) for name, values in stats.probes.items()},
            "probe_errors": stats.probe_errors}


async def _probe(address: str, stats: Stats, run_id: str, client_ids: list[str], until: float) -> None:
    metadata = (("authorization", f"Bearer {ADMIN}"),)
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        control = control_pb2_grpc.ControlServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        paged = "page_size" in control_pb2.ListClientsRequest.DESCRIPTOR.fields_by_name
        calls: dict[str, Any] = {
            "get_client": lambda: control.GetClient(control_pb2.GetClientRequest(
                client_id=random.choice(client_ids)), metadata=metadata, timeout=30),
            "get_run": lambda: control.GetRun(control_pb2.GetRunRequest(run_id=run_id), metadata=metadata, timeout=30),
            "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=30),
        }
        if paged:
            calls["page_100"] = lambda: control.ListClients(control_pb2.ListClientsRequest(page_size=100),
                                                            metadata=metadata, timeout=30)
        while time.monotonic() < until:
            for name, call in calls.items():
                started = time.perf_counter()
                try:
                    await call()
                    stats.probes.setdefault(name, []).append(time.perf_counter() - started)
                except grpc.RpcError as err:
                    stats.probe_errors[f"{name}:{err.code().name}"] = stats.probe_errors.get(name, 0) + 1
                await asyncio.sleep(0.05)


async def list_all(address: str) -> tuple[float, int]:
    """Seconds to list every client (all pages where paging exists), and how many."""
    metadata = (("authorization", f"Bearer {ADMIN}"),)
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        control = control_pb2_grpc.ControlServiceStub(channel)
        started, count, token = time.perf_counter(), 0, ""
        paged = "page_size" in control_pb2.ListClientsRequest.DESCRIPTOR.fields_by_name
        while True:
            request = (control_pb2.ListClientsRequest(page_size=1000, page_token=token) if paged
                       else control_pb2.ListClientsRequest())
            response = await control.ListClients(request, metadata=metadata, timeout=120)
            count += len(response.clients)
            token = response.next_page_token if paged else ""
            if not token:
                return time.perf_counter() - started, count


def seed(url: str, agents: int) -> tuple[list[str], str]:
    """A task, one enrolment token per agent and one finished run, written before the service starts."""
    sessions = open_database(url)
    with sessions.begin() as db:
        db.add(TaskRow(id="task-bench", title="bench", app={"local_path": "/nonexistent"}, strategy={}))
        db.flush()  # the run refers to the task
        db.add(RunRow(id="run-bench", task_id="task-bench", state=S.RUN_STATE_FINISHED,
                      outcome=S.RUN_OUTCOME_COMPLETED))
    sessions.kw["bind"].dispose()
    return enrolment_tokens(url, agents), "run-bench"


def enrolment_tokens(url: str, count: int, task_id: str = "task-bench") -> list[str]:
    """One-time enrolment tokens for a task, written straight to the database (setup, not measured)."""
    sessions = open_database(url)
    tokens = TokenStore(sessions)
    secrets_ = []
    with sessions.begin() as db:
        for _ in range(count):
            secret, _row = tokens.issue(access_pb2.TOKEN_KIND_ENROLMENT, access_pb2.ROLE_AGENT, "bench",
                                        subject=task_id, db=db)
            secrets_.append(secret)
    sessions.kw["bind"].dispose()
    return secrets_


class Control:
    """The control service process."""

    def __init__(self, data_dir: Path, url: str, pin: str, extra: list[str]) -> None:
        self.data_dir, self.url, self.pin, self.extra = data_dir, url, pin, extra
        self.proc: subprocess.Popen[str] | None = None
        self.address = self.metrics = ""

    def start(self) -> None:
        cmd = [sys.executable, "-m", "fedops_control.server.app", "--listen", "127.0.0.1:0",
               "--data-dir", str(self.data_dir), "--metrics-listen", "127.0.0.1:0", "--no-spare-superlink",
               "--log-level", "WARNING", *self.extra]
        if self.url:
            cmd += ["--database-url", self.url]
        if self.pin:
            cmd = ["taskset", "-c", self.pin, *cmd]
        # The service runs the code this process imported (a PYTHONPATH checkout of older code, say), not
        # what ``python -m`` would find first in the working directory.
        import fedops_control

        code = str(Path(fedops_control.__file__).resolve().parents[1])
        env = {**os.environ, "FEDOPS_ADMIN_TOKEN": ADMIN,
               "PYTHONPATH": os.pathsep.join(filter(None, (code, os.environ.get("PYTHONPATH", ""))))}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.data_dir / "control.err", "a"),
                                     text=True, env=env, cwd=self.data_dir)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if m := re.search(r"metrics on http://(\S+)/metrics", line):
                self.metrics = m.group(1)
            if m := re.search(r"listening on (\S+)", line):
                self.address = m.group(1)
                return
        raise RuntimeError(f"control service exited: {(self.data_dir / 'control.err').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def usage(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    try:  # the generator holds as many sessions as the service: the same collector settings
        from fedops_control.server.app import tune_garbage_collector
        tune_garbage_collector()
    except ImportError:
        pass
    data_dir = Path(tempfile.mkdtemp(prefix="fedops-fleet-"))
    url = args.database_url or sqlite_url(data_dir / "control.db")
    tokens, run_id = seed(url, args.agents)
    control = Control(data_dir, args.database_url, args.pin, args.control_arg)
    control.start()
    stats = Stats()
    fleet = Fleet(control.address, tokens, stats, args.heartbeat)
    process, generator = control.usage(), psutil.Process()
    ramp_cpu = (_cpu_s(process), _cpu_s(generator))
    started = time.monotonic()
    agents = [asyncio.create_task(fleet.agent(i)) for i in range(args.agents)]
    deadline = started + args.ramp_timeout
    while len(stats.in_session) < args.agents and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    ramp_s = time.monotonic() - started
    # Which core limited the ramp: the service's, or this generator's (one Python process for every agent).
    ramp_cpu_pct = {"control_cpu_ramp_pct": round(100 * (_cpu_s(process) - ramp_cpu[0]) / ramp_s),
                    "generator_cpu_ramp_pct": round(100 * (_cpu_s(generator) - ramp_cpu[1]) / ramp_s)}
    registered = len(stats.in_session)
    first_registrations = len(stats.register_s)
    register_p99 = p(stats.register_s, 99)
    client_ids = ["client-" + hashlib.sha256(f"bench-{i:05d}".encode()).hexdigest()[:10]
                  for i in range(args.agents)]
    cpu_before, disconnects_before, beats_before = process.cpu_times(), stats.disconnects, stats.heartbeats
    hold_started = time.monotonic()
    probed = await probe(control.address, run_id, client_ids, args.hold, args.operator_nice)
    hold_s = time.monotonic() - hold_started
    cpu_after = process.cpu_times()
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / hold_s
    list_s, listed = await list_all(control.address)
    result: dict[str, Any] = {
        "agents": args.agents, "operator_nice": args.operator_nice,
        "database": "postgresql" if args.database_url else "sqlite",
        "registered": registered, "ramp_s": round(ramp_s, 1),
        "registrations_per_s": round(first_registrations / ramp_s, 1), "register_p99_ms": register_p99,
        **ramp_cpu_pct,
        "register_errors": stats.register_errors, "hold_s": round(hold_s), "disconnects": stats.disconnects -
        disconnects_before, "heartbeats_per_s": round((stats.heartbeats - beats_before) / hold_s),
        "control_cpu_pct": round(100 * cpu), "control_rss_mb": round(process.memory_info().rss / 2**20),
        "list_all_s": round(list_s, 2), "listed": listed,
        **probed, **await server_side(control.metrics),
    }
    if args.restart:
        control.stop()
        stopped = time.monotonic()
        stats.register_errors.clear()
        control.start()
        await fleet.repoint(control.address)  # the port changes
        deadline = stopped + args.ramp_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            if len(stats.in_session) >= args.agents and await connected(control.metrics) >= args.agents:
                break
        result["reconnect_s"] = round(time.monotonic() - stopped, 1)
        result["reconnected"] = await connected(control.metrics)
        result["reconnect_errors"] = dict(stats.register_errors)
        _list_s, result["clients_after_restart"] = await list_all(control.address)
    fleet.stopping = True
    for task in agents:
        task.cancel()
    await asyncio.gather(*agents, return_exceptions=True)
    await fleet.close()
    control.stop()
    return result


def _cpu_s(process: psutil.Process) -> float:
    """CPU seconds (user + system) a process has used."""
    times = process.cpu_times()
    return times.user + times.system


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` of a cumulative histogram, in ms."""
    total = buckets[-1][1] if buckets else 0
    for bound, count in buckets:
        if total and count >= q * total:
            return round(1000 * bound, 1) if bound != float("inf") else -1
    return -1


async def server_side(metrics: str) -> dict[str, Any]:
    """What the service measured itself over the whole bench (its histograms: bucket bounds, not exact):
    RPC p99 per method and the event loop's lag. Empty for code without these metrics."""
    import urllib.request

    def read(path: str = "/metrics") -> str:
        with urllib.request.urlopen(f"http://{metrics}{path}", timeout=60) as response:
            return response.read().decode()
    try:
        started = time.perf_counter()
        text = await asyncio.to_thread(read)
        scrape_s = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.to_thread(read, "/sd/agents")
        sd_s = time.perf_counter() - started
    except OSError:
        return {}
    series: dict[str, list[tuple[float, float]]] = {}
    for m in re.finditer(r'^fedops_control_rpc_duration_seconds_bucket\{le="([^"]+)",method="(\w+)"\} (\S+)$|'
                         r'^fedops_control_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        if m.group(1):
            series.setdefault(f"server_{m.group(2)}", []).append((float(m.group(1)), float(m.group(3))))
        else:
            series.setdefault("server_loop_lag", []).append((float(m.group(4)), float(m.group(5))))
    return {"metrics_scrape_ms": round(1000 * scrape_s), "http_sd_ms": round(1000 * sd_s),
            **{f"{name}_p99_ms": quantile(sorted(b), 0.99) for name, b in sorted(series.items())
               if name in ("server_Register", "server_GetClient", "server_GetRun", "server_ListClients",
                           "server_loop_lag")}}


async def connected(metrics: str) -> int:
    """``fedops_clients_connected`` as the control service reports it."""
    if not metrics:
        return -1
    import urllib.request

    def read() -> int:
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=30) as response:
            text = response.read().decode()
        match = re.search(r"^fedops_clients_connected (\S+)$", text, re.M)
        return int(float(match.group(1))) if match else -1
    with contextlib.suppress(OSError):
        return await asyncio.to_thread(read)
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--hold", type=float, default=60, help="seconds the fleet holds its sessions while probed")
    parser.add_argument("--heartbeat", type=float, default=0,
                        help="seconds between heartbeats (default: what the service says at registration)")
    parser.add_argument("--ramp-timeout", type=float, default=180)
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--pin", default="", help="taskset CPU list for the control service, e.g. 0")
    parser.add_argument("--restart", action="store_true", help="then restart the service and time the reconnects")
    parser.add_argument("--control-arg", action="append", default=[], help="extra fedops-control option")
    parser.add_argument("--operator-nice", type=int, default=0,
                        help="niceness change of the operator process, e.g. -10 (root): see probe()")
    parser.add_argument("--out", type=Path, help="append the JSON result to this file")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with args.out.open("a") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    main()
