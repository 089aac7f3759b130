"""Fleet scale at a small size: hundreds of simulated agents (bench/fleet_load.py, the real agent
protocol with auth on) against a real control service process.

Liveness is persisted within the documented staleness, a silent agent is dropped within the liveness
timeout, paging stays correct while clients join, a restart loses no enrolment and makes no duplicate,
and an enrolment retried with the same one-time token succeeds for the same device only.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.fleet_load import ADMIN, Control, Fleet, Stats, enrolment_tokens, seed
from fedops_common.grpc_channel import CHANNEL_OPTIONS
from fedops_common.proto import agent_pb2, agent_pb2_grpc, common_pb2, control_pb2, control_pb2_grpc
from fedops_control.state.db import sqlite_url

pytestmark = pytest.mark.integration
S = common_pb2
AGENTS = 300
# Short settings so the test sees several batches and a timeout in seconds (the defaults are 5/15/5).
HEARTBEAT_S, TIMEOUT_S, PERSIST_S = 1, 4.0, 1.0
SETTINGS = ["--heartbeat-interval", str(HEARTBEAT_S), "--liveness-timeout", str(TIMEOUT_S),
            "--liveness-persist-interval", str(PERSIST_S)]
METADATA = (("authorization", f"Bearer {ADMIN}"),)


async def until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await check() if asyncio.iscoroutinefunction(check) else check()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what() if callable(what) else what}")


def client_states(metrics_address: str) -> dict[str, int]:
    """``fedops_clients`` by state, read from the service's /metrics."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {m.group(1): int(float(m.group(2)))
            for m in re.finditer(r'^fedops_clients\{state="([a-z_]+)"\} (\S+)$', text, re.M)}


async def list_pages(address: str, page_size: int, between_pages: Any = None) -> list[str]:
    """Every client id, page by page (``between_pages`` awaited after each page)."""
    ids, token = [], ""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        control = control_pb2_grpc.ControlServiceStub(channel)
        while True:
            page = await control.ListClients(control_pb2.ListClientsRequest(page_size=page_size, page_token=token),
                                             metadata=METADATA, timeout=30)
            assert len(page.clients) <= page_size
            ids += [c.id for c in page.clients]
            token = page.next_page_token
            if not token:
                return ids
            if between_pages is not None:
                await between_pages()


def newest_first(db: Path) -> list[str]:
    """Client ids, newest registration first (ties by id), read from the SQLite file."""
    with sqlite3.connect(db) as conn:
        return [cid for (cid,) in conn.execute("select id from clients order by registered_at desc, id desc")]


def stored_heartbeats(db: Path) -> dict[str, float]:
    """Seconds since each client's stored last heartbeat (the batches' work), read from the SQLite file."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select id, (julianday('now') - julianday(last_heartbeat)) * 86400 from clients")
        return {cid: age for cid, age in rows}


def test_fleet_liveness_paging_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    tokens, _run_id = seed(sqlite_url(db), AGENTS)
    control = Control(tmp_path, "", "", SETTINGS)
    control.start()
    stats = Stats()

    async def scenario() -> None:
        fleet = Fleet(control.address, tokens, stats, HEARTBEAT_S)  # its channels belong to this loop
        agents = [asyncio.create_task(fleet.agent(i)) for i in range(AGENTS)]
        try:
            await until(lambda: len(stats.in_session) == AGENTS, 40, f"{AGENTS} agents in session")
            assert stats.register_errors == {}
            # Every agent holds a session: all count as online, none twice.
            await until(lambda: client_states(control.metrics).get("online") == AGENTS, 10, "all online")

            # Liveness: the stored last heartbeat of every client is at most the persist interval
            # (plus one batch and this check's own slack) behind, although no heartbeat is a transaction.
            await asyncio.sleep(2 * PERSIST_S)
            ages = stored_heartbeats(db)
            assert len(ages) == AGENTS
            assert max(ages.values()) < HEARTBEAT_S + PERSIST_S + 1.5, max(ages.values())

            # An agent that keeps its stream but stops heartbeating is offline within the timeout.
            silent = set(range(10))
            fleet.hung |= silent
            stopped = time.monotonic()
            silent_ids = {fleet.client_ids[i] for i in silent}
            async with grpc.aio.insecure_channel(control.address, options=CHANNEL_OPTIONS) as channel:
                stub = control_pb2_grpc.ControlServiceStub(channel)

                async def all_offline() -> bool:
                    got = [await stub.GetClient(control_pb2.GetClientRequest(client_id=cid), metadata=METADATA)
                           for cid in silent_ids]
                    return all(c.state == S.CLIENT_STATE_OFFLINE for c in got)

                await until(all_offline, TIMEOUT_S + HEARTBEAT_S + 3, "silent agents offline")
            assert time.monotonic() - stopped >= TIMEOUT_S - HEARTBEAT_S  # not before the timeout
            fleet.hung -= silent  # they reconnect (their session ended) and heartbeat again
            await until(lambda: client_states(control.metrics).get("online") == AGENTS, 30, "back online")

            # Paging while 100 more clients join: every client that existed when paging began is
            # listed exactly once, newest registration first; the joiners (newer than the first page)
            # on no page.
            before = set(fleet.client_ids.values())
            more = enrolment_tokens(sqlite_url(db), 100)
            fleet.tokens.extend(more)
            joiners: list[asyncio.Task[None]] = []
            waiting = list(range(AGENTS, AGENTS + len(more)))

            async def join_some() -> None:
                batch, waiting[:] = waiting[:20], waiting[20:]
                joiners.extend(asyncio.create_task(fleet.agent(i)) for i in batch)
                await asyncio.sleep(0.3)

            listed = await list_pages(control.address, 50, join_some)
            agents.extend(joiners)
            assert len(listed) == len(set(listed)), "a client listed twice"
            assert set(listed) == before
            assert listed == [cid for cid in newest_first(db) if cid in before]
            total = AGENTS + len(more)
            await until(lambda: len(stats.in_session) == total, 30, "joiners in session")
            assert sorted(await list_pages(control.address, 1000)) == sorted(fleet.client_ids.values())

            # A restart loses no enrolment: every agent is back with its credential, no duplicate client.
            control.stop()
            stats.register_errors.clear()
            control.start()
            await fleet.repoint(control.address)
            await until(lambda: client_states(control.metrics).get("online") == total, 45,
                        lambda: f"all back after restart: {client_states(control.metrics)}, "
                                f"{len(stats.in_session)} in session, errors {stats.register_errors}")
            after = await list_pages(control.address, 1000)
            assert sorted(after) == sorted(fleet.client_ids.values()) and len(after) == total
            assert "UNAUTHENTICATED" not in stats.register_errors and "PERMISSION_DENIED" not in stats.register_errors
        finally:
            fleet.stopping = True
            for task in agents:
                task.cancel()
            await asyncio.gather(*agents, return_exceptions=True)
            await fleet.close()

    try:
        asyncio.run(scenario())
    finally:
        control.stop()


def test_enrolment_retried_with_the_same_token_succeeds_for_the_same_device(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    (token,), _run = seed(sqlite_url(db), 1)
    control = Control(tmp_path, "", "", [])
    control.start()
    try:
        with grpc.insecure_channel(control.address) as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)

            def register(device_id: str, tokens: list[str], credential: str = "") -> agent_pb2.RegisterResponse:
                return agents.Register(agent_pb2.RegisterRequest(
                    device=S.DeviceInfo(device_id=device_id, hostname=device_id), enrolment_tokens=tokens),
                    metadata=(("authorization", f"Bearer {credential}"),) if credential else None, timeout=10)

            first = register("device-1", [token])
            # The response was lost: the agent retries with the same token and gets a working credential.
            retry = register("device-1", [token])
            assert retry.client_id == first.client_id and retry.credential and retry.credential != first.credential
            assert register("device-1", [], retry.credential).client_id == first.client_id
            # The credential that never arrived is revoked; the token still enrols no other device.
            with pytest.raises(grpc.RpcError) as lost:
                register("device-1", [], first.credential)
            assert lost.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as other:
                register("device-2", [token])
            assert other.value.code() == grpc.StatusCode.UNAUTHENTICATED
            control_stub = control_pb2_grpc.ControlServiceStub(channel)
            listed = control_stub.ListClients(control_pb2.ListClientsRequest(), metadata=METADATA, timeout=10)
            assert [c.id for c in listed.clients] == [first.client_id]  # no duplicate client
            with pytest.raises(grpc.RpcError) as bad:
                control_stub.ListClients(control_pb2.ListClientsRequest(page_size=5000), metadata=METADATA, timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in (bad.value.details() or "")
    finally:
        control.stop()
