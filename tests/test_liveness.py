"""Liveness in memory (agents/sessions.py), its batches (agents/liveness.py) and the HTTP-SD list of
connected agents built from it, on a real SQLite file."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from fedops_common.convert import utcnow
from fedops_control.agents.liveness import Liveness
from fedops_control.agents.sessions import AgentSessions, LivenessSettings
from fedops_control.state.models import ClientRow


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="heartbeat interval"):
        LivenessSettings(heartbeat_interval_s=0)
    with pytest.raises(ValueError, match="liveness timeout"):
        LivenessSettings(heartbeat_interval_s=5, timeout_s=5)
    with pytest.raises(ValueError, match="persist interval"):
        LivenessSettings(persist_interval_s=0)


def test_a_silent_agent_is_dropped_but_not_a_fleet_that_looks_silent() -> None:
    async def scenario() -> None:
        agents = AgentSessions(LivenessSettings(heartbeat_interval_s=1, timeout_s=2))
        queues = {f"c{i:03d}": agents.open(f"c{i:03d}") for i in range(200)}
        long_ago = utcnow() - dt.timedelta(seconds=3)
        for cid in ("c001", "c002"):
            agents.last_seen[cid] = long_ago
        assert agents.drop_silent() == (["c001", "c002"], 0)
        assert queues["c001"].get_nowait() is None and queues["c003"].empty()  # their sessions end
        for cid in ("c001", "c002"):
            assert agents.close(cid, queues[cid])  # as Session() does once it ended
        for i in range(10, 60):  # 25 % at once: this service is behind, not 50 hung agents
            agents.last_seen[f"c{i:03d}"] = long_ago
        assert agents.drop_silent() == ([], 50)
        assert all(queues[f"c{i:03d}"].empty() for i in range(10, 60))

    asyncio.run(scenario())


def test_batches_persist_last_seen_and_only_what_changed(db_sessions: Any) -> None:
    with db_sessions.begin() as db:
        for cid in ("a", "b", "c"):
            db.add(ClientRow(id=cid, device={}, state=1, last_heartbeat=utcnow() - dt.timedelta(hours=1)))

    async def scenario() -> tuple[int, int]:
        agents = AgentSessions()
        liveness = Liveness(db_sessions, agents, lambda fn, *args: asyncio.to_thread(fn, *args))
        agents.seen("a")
        agents.seen("b")
        first = await liveness.persist()
        return first, await liveness.persist()  # nothing new: no batch

    assert asyncio.run(scenario()) == (2, 0)
    with db_sessions() as db:
        ages = {row.id: (utcnow() - row.last_heartbeat).total_seconds() for row in db.query(ClientRow)}
    assert ages["a"] < 5 and ages["b"] < 5 and ages["c"] > 3000


def test_http_sd_lists_connected_agents_with_an_endpoint(db_sessions: Any) -> None:
    """Prometheus HTTP-SD (served on the /metrics thread): every connected agent that has a
    metrics endpoint, by client id, with its hostname and device id as labels."""
    import warnings

    from fedops_control.server.app import AgentTargets

    with db_sessions.begin() as db:
        db.add(ClientRow(id="b", device={"hostname": "h2", "device_id": "d2"}, state=1, metrics_address="10.0.0.2:9"))
        db.add(ClientRow(id="a", device={"hostname": "h1"}, state=1, metrics_address="10.0.0.1:9"))
        db.add(ClientRow(id="c", device={}, state=1, metrics_address=""))  # no endpoint
        db.add(ClientRow(id="d", device={}, state=1, metrics_address="10.0.0.4:9"))  # not connected
    agents = AgentSessions()
    for cid in ("a", "b", "c"):
        agents.open(cid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated SQLAlchemy API on the way
        targets = AgentTargets(db_sessions, agents)()
    assert targets == [
        {"targets": ["10.0.0.1:9"], "labels": {"client_id": "a", "hostname": "h1", "device_id": ""}},
        {"targets": ["10.0.0.2:9"], "labels": {"client_id": "b", "hostname": "h2", "device_id": "d2"}},
    ]
