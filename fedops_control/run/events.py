"""Run events: persisted (so WatchRun can replay) and announced to live watchers."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fedops_common.logging import get_logger
from fedops_common.telemetry import TelemetryWriter
from fedops_control.state.models import EventRow, RunRow

log = get_logger(__name__)


class EventBus:
    """Append-only event log per run with an asyncio wake-up for watchers."""

    def __init__(self, sessions: sessionmaker[Session], writer: TelemetryWriter | None = None) -> None:
        self._sessions = sessions
        self._writer = writer
        self._changed = asyncio.Condition()

    async def publish(self, run_id: str, kind: str, message: str = "", round: int = 0,
                      client_id: str = "", data: dict[str, Any] | None = None) -> None:
        """Store an event and wake every watcher."""
        with self._sessions.begin() as db:
            row = EventRow(run_id=run_id, kind=kind, message=message, round=round, client_id=client_id,
                           data=data or {})
            db.add(row)
            db.flush()
            seq = row.seq
            run = db.get(RunRow, run_id)
            task_id = run.task_id if run is not None else ""
        if self._writer is not None:
            self._writer.write("run-events", {
                "event.action": kind, "event.sequence": seq, "message": message or kind, "fedops.run.id": run_id,
                "fedops.task.id": task_id, "fedops.round": round, "fedops.client.id": client_id,
                "fedops.event.data": data or {}})
        log.info(message or kind, run_id=run_id, task_id=task_id or None, round=round or None,
                 client_id=client_id or None, event_kind=kind)
        await self.notify()

    async def notify(self) -> None:
        """Wake watchers (also used for state changes that are not events)."""
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, timeout_s: float) -> None:
        """Wait for the next publish, at most ``timeout_s``."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_s)
            except TimeoutError:
                pass

    def since(self, run_id: str, after_seq: int) -> list[EventRow]:
        """Events of a run with seq > after_seq, oldest first."""
        with self._sessions() as db:
            return list(db.query(EventRow).filter(EventRow.run_id == run_id, EventRow.seq > after_seq)
                        .order_by(EventRow.seq).all())
