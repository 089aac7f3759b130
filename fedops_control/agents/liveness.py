"""Liveness kept in memory, persisted in batches; silent agents dropped.

A heartbeat used to be one database transaction on the event loop; at 2,000 agents that was 88.6 %
of the loop's time (bench/README.md). Now a heartbeat only updates :class:`AgentSessions` in memory,
and this loop writes every changed ``clients.last_heartbeat`` in one statement per
``persist_interval_s``, on the database thread. The stored value is therefore at most
``persist_interval_s`` plus one batch's duration older than the truth (what a restarted service or
another reader of the database sees); the live value is in memory. State changes (online, training,
failed, run membership) do not wait for a batch: the agent servicer writes them at once, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.logging import get_logger
from fedops_control import metrics
from fedops_control.agents.sessions import AgentSessions
from fedops_control.state.models import ClientRow

log = get_logger(__name__)
LostHandler = Callable[[str], Awaitable[Any]]


class Liveness:
    """Persists last-seen times in batches and ends the sessions of agents that went silent."""

    def __init__(self, sessions: sessionmaker[Session], agents: AgentSessions,
                 run_db: Callable[..., Awaitable[Any]]) -> None:
        self._sessions = sessions
        self._agents = agents
        self._run_db = run_db  # runs a blocking function on the database thread

    def _write(self, seen: dict[str, Any]) -> None:
        statement = update(ClientRow).where(ClientRow.id == bindparam("cid")).values(
            last_heartbeat=bindparam("seen"))
        with self._sessions.begin() as db:
            db.connection().execute(statement, [{"cid": cid, "seen": at} for cid, at in seen.items()])

    async def persist(self) -> int:
        """Write the unsaved last-seen times in one batch; how many."""
        seen = self._agents.take_unsaved()
        if not seen:
            return 0
        started = time.perf_counter()
        try:
            await self._run_db(self._write, seen)
        except Exception:
            log.exception("liveness batch failed; retried with the next one", clients=len(seen))
            for cid in seen:  # keep them for the next batch
                self._agents.seen_at(cid, seen[cid])
            return 0
        metrics.db_batch(time.perf_counter() - started, len(seen))
        return len(seen)

    async def run(self) -> None:
        """Until cancelled: drop silent agents every second, persist every persist_interval_s."""
        settings = self._agents.settings
        next_persist = time.monotonic() + settings.persist_interval_s
        try:
            while True:
                await asyncio.sleep(min(1.0, settings.persist_interval_s))
                dropped, kept = self._agents.drop_silent()
                for cid in dropped:
                    log.warning("agent silent: session ended", client_id=cid, timeout_s=settings.timeout_s)
                if kept:
                    log.warning("many agents silent at once: sessions kept (this service is behind)", silent=kept)
                if time.monotonic() >= next_persist:
                    next_persist = time.monotonic() + settings.persist_interval_s
                    await self.persist()
        finally:
            await self.persist()  # on shutdown: what is in memory is not lost
