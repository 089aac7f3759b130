"""Agent sessions: one command queue per connected client, and liveness bookkeeping in memory."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from fedops_common.convert import utcnow
from fedops_common.proto import agent_pb2, common_pb2

MASS_SILENCE, MASS_SILENCE_MIN = 0.05, 10  # more silent sessions at once than this share (or count): ours


@dataclass(frozen=True)
class LivenessSettings:
    """How often agents heartbeat, when a silent one is dropped, how stale stored liveness may be.

    Defaults from bench/fleet_load.py (bench/README.md): once a heartbeat touches no database it
    still costs the control service about 90 µs of CPU (gRPC included): 5,000 agents every 2 s
    took 22 % of its core, so 10,000 would take ~45 % every 2 s and ~18 % every 5 s, which leaves
    the core to registrations and operators. A dead connection is noticed by gRPC keepalive
    (10 s + 5 s); the timeout catches an agent that holds its stream but stopped heartbeating
    (hung), after three missed heartbeats.
    """

    heartbeat_interval_s: int = 5
    timeout_s: float = 15.0
    persist_interval_s: float = 5.0   # clients.last_heartbeat lags memory by at most this plus one batch

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s < 1:
            raise ValueError("heartbeat interval: at least 1 s")
        if self.timeout_s <= self.heartbeat_interval_s:
            raise ValueError("liveness timeout: longer than the heartbeat interval")
        if self.persist_interval_s <= 0:
            raise ValueError("liveness persist interval: positive")


class AgentSessions:
    """Which agents hold a session now, how to send them commands, and when each was last heard of."""

    def __init__(self, settings: LivenessSettings | None = None) -> None:
        self.settings = settings or LivenessSettings()
        self._queues: dict[str, asyncio.Queue[agent_pb2.AgentCommand | None]] = {}
        self.last_seen: dict[str, dt.datetime] = {}
        self._unsaved: set[str] = set()   # heard of since the last persisted batch

    def open(self, client_id: str) -> asyncio.Queue[agent_pb2.AgentCommand | None]:
        """Register a session; a previous session of the same client is closed."""
        old = self._queues.get(client_id)
        if old is not None:
            old.put_nowait(None)
        queue: asyncio.Queue[agent_pb2.AgentCommand | None] = asyncio.Queue()
        self._queues[client_id] = queue
        self.seen(client_id)
        return queue

    def close(self, client_id: str, queue: asyncio.Queue[agent_pb2.AgentCommand | None]) -> bool:
        """Forget a session; False when a newer session already replaced it."""
        if self._queues.get(client_id) is queue:
            del self._queues[client_id]
            return True
        return False

    def seen(self, client_id: str) -> None:
        """The agent spoke (a heartbeat, a report): in memory now, persisted with the next batch."""
        self.last_seen[client_id] = utcnow()
        self._unsaved.add(client_id)

    def seen_at(self, client_id: str, at: dt.datetime) -> None:
        """Put back a last-seen time whose batch failed (unless the agent spoke since)."""
        self.last_seen.setdefault(client_id, at)
        self._unsaved.add(client_id)

    def take_unsaved(self) -> dict[str, dt.datetime]:
        """Last-seen times not persisted yet (handed over: the caller persists them)."""
        unsaved, self._unsaved = self._unsaved, set()
        return {cid: self.last_seen[cid] for cid in unsaved if cid in self.last_seen}

    def drop_silent(self) -> tuple[list[str], int]:
        """End the sessions of agents silent for longer than the timeout: (their ids, how many silent
        sessions were kept because too many went silent at once).

        Hung agents go silent one by one. When many sessions go silent together it is this service
        that is behind (its event loop has not read their messages yet): ending them all would turn
        its overload into a reconnect storm. At 10,000 simulated agents that is what happened, 7,810
        sessions ended in one minute (bench/README.md). Dead connections are ended by gRPC keepalive
        anyway; so above MASS_SILENCE of the sessions, none is ended.
        """
        cutoff = utcnow() - dt.timedelta(seconds=self.settings.timeout_s)
        silent = [cid for cid in self._queues if self.last_seen.get(cid, cutoff) <= cutoff]
        if len(silent) > max(MASS_SILENCE_MIN, MASS_SILENCE * len(self._queues)):
            return [], len(silent)
        for cid in silent:
            self._queues[cid].put_nowait(None)  # the session ends and the client is marked offline
        return silent, 0

    def is_connected(self, client_id: str) -> bool:
        """Whether the client holds a session now."""
        return client_id in self._queues

    def effective_state(self, client_id: str, stored: int) -> int:
        """A client's state as shown everywhere: without a session it is offline (unless it failed,
        which stays visible). The stored state of a device whose session ended is not rewritten at once."""
        if client_id not in self._queues and stored != common_pb2.CLIENT_STATE_FAILED:
            return common_pb2.CLIENT_STATE_OFFLINE
        return stored

    def connected(self) -> list[str]:
        """Client ids holding a session now."""
        return list(self._queues)

    def connected_count(self) -> int:
        """How many agents hold a session now."""
        return len(self._queues)

    def send(self, client_id: str, command: agent_pb2.AgentCommand) -> bool:
        """Queue a command; False when the client has no session."""
        queue = self._queues.get(client_id)
        if queue is None:
            return False
        queue.put_nowait(command)
        return True

    def heartbeat_age_s(self, client_id: str, last_heartbeat: dt.datetime | None) -> float:
        """Seconds since the last heartbeat (in-memory or stored), or -1 when never seen."""
        seen = self.last_seen.get(client_id) or last_heartbeat
        return (utcnow() - seen).total_seconds() if seen else -1.0
