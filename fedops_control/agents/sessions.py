"""Agent sessions: one command queue per connected client, and liveness bookkeeping."""

from __future__ import annotations

import asyncio
import datetime as dt

from fedops_common.convert import utcnow
from fedops_common.proto import agent_pb2

HEARTBEAT_INTERVAL_S = 2


class AgentSessions:
    """Which agents hold a session now, and how to send them commands."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[agent_pb2.AgentCommand | None]] = {}
        self.last_seen: dict[str, dt.datetime] = {}

    def open(self, client_id: str) -> asyncio.Queue[agent_pb2.AgentCommand | None]:
        """Register a session; a previous session of the same client is closed."""
        old = self._queues.get(client_id)
        if old is not None:
            old.put_nowait(None)
        queue: asyncio.Queue[agent_pb2.AgentCommand | None] = asyncio.Queue()
        self._queues[client_id] = queue
        self.last_seen[client_id] = utcnow()
        return queue

    def close(self, client_id: str, queue: asyncio.Queue[agent_pb2.AgentCommand | None]) -> bool:
        """Forget a session; False when a newer session already replaced it."""
        if self._queues.get(client_id) is queue:
            del self._queues[client_id]
            return True
        return False

    def is_connected(self, client_id: str) -> bool:
        """Whether the client holds a session now."""
        return client_id in self._queues

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
