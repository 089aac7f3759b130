"""Reports of the wrappers inside Flower's app processes, one small handler per kind.

The ServerApp wrapper sends typed ``ServerEvent``s (one ``oneof`` member per kind); each is
applied in one database transaction, and what it announces (run events, telemetry documents,
commands to agents) goes out after the commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fedops_common import metricvalues
from fedops_common.convert import utcnow
from fedops_common.proto import agent_pb2, common_pb2
from fedops_common.telemetry import TelemetryWriter
from fedops_control import metrics
from fedops_control.agents.sessions import AgentSessions
from fedops_control.errors import InvalidArgument, NotFound
from fedops_control.run.events import EventBus
from fedops_control.run.nodenames import name_node_in_open_rounds, placeholder
from fedops_control.state.models import (
    ClientResultRow,
    ClientRow,
    EventRow,
    ModelRow,
    RoundRow,
    RunRow,
)

S = common_pb2
A = agent_pb2
GRID_ONLY_NOTE = "the app drives Flower's Grid itself (no strategy FedOps can hook): rounds and replies are " \
                 "observed, but there is no global model to store"
NO_ROUNDS_NOTE = "no round finished: nothing to store"
NO_MESSAGES = "the ServerApp ended without sending a message: no rounds ran"


@dataclass
class Applied:
    """One report being applied: the run's rows, and what to announce after the commit."""

    db: Session
    run: RunRow
    event: agent_pb2.ServerEvent
    round: RoundRow | None
    publish: list[tuple[str, str, int, str, dict[str, Any]]] = field(default_factory=list)
    docs: list[dict[str, Any]] = field(default_factory=list)
    notices: list[tuple[str, agent_pb2.AgentCommand]] = field(default_factory=list)
    end: tuple[common_pb2.RunOutcome.ValueType, str] | None = None  # (outcome, reason) once the app ended

    @property
    def number(self) -> int:
        return self.event.round

    def client_of(self, node_id: int) -> str:
        return self.run.node_clients.get(str(node_id), "") or placeholder(node_id)

    def doc(self, scope: str, phase: str = "", client_id: str = "", values: Any = None,
            extra: dict[str, Any] | None = None) -> None:
        """A round-metrics telemetry document (``extra``: more ECS fields)."""
        self.docs.append({"metric.scope": scope, "fedops.run.id": self.run.id, "fedops.task.id": self.run.task_id,
                          "fedops.round": self.number, "fedops.phase": phase, "fedops.client.id": client_id,
                          "metrics": dict(values or {}), **(extra or {})})

    def say(self, kind: str, message: str, client_id: str = "", data: dict[str, Any] | None = None) -> None:
        self.publish.append((kind, message, self.number, client_id, data or {}))


def record_client_result(db: Session, run_id: str, number: int, phase: str, client_id: str, node_id: str = "",
                         values: dict[str, Any] | None = None, duration_s: float = 0.0, error: str = "") -> bool:
    """One row per client, round and phase, whichever report (the ClientApp's own, the Grid's reply)
    comes first; returns True when the row is new."""
    row = (db.query(ClientResultRow).filter_by(run_id=run_id, round=number, phase=phase, client_id=client_id)
           .one_or_none())
    new = row is None
    if row is None:
        row = ClientResultRow(run_id=run_id, round=number, phase=phase, client_id=client_id, metrics={}, error="")
        db.add(row)
    row.node_id = node_id or row.node_id or ""
    row.metrics = {**(row.metrics or {}), **(values or {})}
    row.duration_s = duration_s or row.duration_s or 0.0
    if error and not row.error:
        row.error = error
    return new


def _mark_failed(db: Session, client_id: str, reason: str, connected: bool) -> None:
    """The client failed a step. One whose agent is gone (stopped, or its machine down) is offline,
    not failed: Flower's "Node Unavailable" only says its SuperNode stopped answering."""
    client = db.get(ClientRow, client_id)
    if client is None:
        return
    if connected:
        client.state, client.state_reason = S.CLIENT_STATE_FAILED, reason
    else:
        client.state = S.CLIENT_STATE_OFFLINE
        client.state_reason = f"{reason.split(':', 1)[0]}: left the run (its agent disconnected)"


def _close_round(applied: Applied, round_row: RoundRow, counted: bool) -> None:
    """A round is done: counted rounds feed the completed count and Prometheus."""
    round_row.phase, round_row.finished_at = "done", utcnow()
    round_row.phase_expected, round_row.phase_received = [], []
    if not counted or round_row.number < 1:
        return
    applied.run.completed_rounds += 1
    metrics.round_completed(applied.run.task_id, (round_row.finished_at - round_row.started_at).total_seconds())


def _close_open_rounds(applied: Applied, before: int | None = None) -> None:
    """Rounds a Grid-only app left open (no strategy reports their end) finish when a later round
    starts or the app ends; round 0 (initialisation) finishes when round 1 starts."""
    query = applied.db.query(RoundRow).filter(RoundRow.run_id == applied.run.id, RoundRow.finished_at.is_(None))
    for round_row in query:
        if before is None or round_row.number < before:
            _close_round(applied, round_row, counted=applied.run.api_style == S.API_STYLE_GRID_ONLY)


def _set_metric_gauges(run: RunRow, scope: str, values: dict[str, Any]) -> None:
    metrics.global_metrics(run.id, run.task_id, scope, metricvalues.scalars(values))


def _root_cause(applied: Applied, failed: agent_pb2.AppFailed) -> str:
    """The failure's cause first: the clients' most common error, then the step that could not go on."""
    event = applied.event
    if not failed.HasField("quorum"):
        return f"{failed.error_type}: {failed.message}" if failed.error_type else failed.message
    quorum = failed.quorum
    step = (f"round {event.round} {quorum.phase}: {quorum.ok} of {quorum.sent} "
            f"{'reply' if quorum.sent == 1 else 'replies'} succeeded, {quorum.needed} needed for the quorum")
    rows = (applied.db.query(ClientResultRow)
            .filter(ClientResultRow.run_id == applied.run.id, ClientResultRow.round == event.round,
                    ClientResultRow.phase == quorum.phase, ClientResultRow.error != "").all())
    errors = Counter(row.error for row in rows)
    if not errors:
        return step
    error, count = errors.most_common(1)[0]
    clients = sorted(row.client_id for row in rows if row.error == error)
    others = len(clients) - 1
    cause = f"{error} on {clients[0]}" + (f" (and {others} more)" if others else "")
    if len(errors) > 1:
        cause += f"; {len(errors) - 1} other error{'s' if len(errors) > 2 else ''} in the client results"
    return f"{cause}; {step}"


class ServerReports:
    """Applies ServerApp-side reports to the run's rows."""

    def __init__(self, sessions: sessionmaker[Session], bus: EventBus, agents: AgentSessions,
                 writer: TelemetryWriter | None, round_notice: Callable[[Session, RunRow, int], agent_pb2.AgentCommand],
                 on_end: Callable[[str, common_pb2.RunOutcome.ValueType, str], None]) -> None:
        self._sessions = sessions
        self._bus = bus
        self._agents = agents
        self._writer = writer
        self._round_notice = round_notice
        self._on_end = on_end
        self._handlers: dict[str, Callable[[Applied], None]] = {
            "app_started": self._app_started, "strategy_started": self._strategy_started,
            "phase_started": self._phase_started, "replies": self._replies, "phase_finished": self._phase_finished,
            "aggregated": self._aggregated, "central_evaluation": self._central_evaluation,
            "round_finished": self._round_finished, "app_finished": self._app_finished,
            "app_failed": self._app_failed,
        }

    async def apply(self, event: agent_pb2.ServerEvent) -> bool:
        """Apply one report; returns whether a cooperative stop is requested."""
        kind = event.WhichOneof("event")
        if kind is None:
            raise InvalidArgument("event", "one report kind is required")
        if event.round < 0:
            raise InvalidArgument("round", "must not be negative")
        with self._sessions.begin() as db:
            run = db.get(RunRow, event.run_id)
            if run is None:
                raise NotFound(f"run {event.run_id} not found")
            applied = Applied(db, run, event, db.get(RoundRow, (run.id, event.round)))
            self._handlers[kind](applied)
            stop_requested = run.stop_requested == "cooperative"
        for client_id, notice in applied.notices:  # agents tag their telemetry, report data status
            self._agents.send(client_id, notice)
        if self._writer is not None:
            for document in applied.docs:
                self._writer.write("round-metrics", document)
        for kind_, message, number, client_id, data in applied.publish:
            await self._bus.publish(event.run_id, kind_, message, round=number, client_id=client_id, data=data)
        if applied.end is not None:
            self._on_end(event.run_id, *applied.end)
        return stop_requested

    # ------------------------------------------------------------ one handler per kind
    def _app_started(self, applied: Applied) -> None:
        warm = applied.event.app_started.warm_fork
        applied.say("app_started", "ServerApp started" + (" (a fork of the warm template)" if warm else ""),
                    data={"warm_fork": warm})

    def _strategy_started(self, applied: Applied) -> None:
        started, run = applied.event.strategy_started, applied.run
        run.api_style = started.api_style
        if started.num_rounds > 0:
            run.total_rounds = started.num_rounds  # what the app runs, whoever decided it
        style = S.ApiStyle.Name(started.api_style).removeprefix("API_STYLE_").lower()
        applied.say("strategy_started", f"{started.strategy} started ({style}): {started.num_rounds} rounds, "
                                        f"round timeout {started.timeout_s:g}s",
                    data={"strategy": started.strategy, "api_style": style, "rounds": started.num_rounds})

    def _phase_started(self, applied: Applied) -> None:
        started, run, number = applied.event.phase_started, applied.run, applied.number
        if run.api_style == S.API_STYLE_UNSPECIFIED:
            run.api_style = S.API_STYLE_GRID_ONLY
            run.model_note = run.model_note or GRID_ONLY_NOTE
        _close_open_rounds(applied, before=number)
        clients = [applied.client_of(n) for n in started.node_ids]
        round_row = applied.round
        if round_row is None:
            round_row = RoundRow(run_id=run.id, number=number, started_at=utcnow(), selected=[], responded=[],
                                 failed=[], train_metrics={}, evaluate_metrics={}, central_metrics={})
            applied.db.add(round_row)
            applied.round = round_row
            if number >= 1:
                notice = self._round_notice(applied.db, run, number)
                applied.notices += [(cid, notice) for cid in clients]
        if started.phase == "train" or not round_row.selected:
            round_row.selected = sorted(set(round_row.selected) | set(clients))
        round_row.phase, round_row.phase_started_at = started.phase, utcnow()
        round_row.phase_timeout_s, round_row.phase_expected, round_row.phase_received = started.timeout_s, clients, []
        round_row.finished_at = None
        run.current_round = max(run.current_round, number)
        label = "initialisation" if number == 0 else f"round {number}"
        applied.say("round_phase", f"{label} {started.phase}: sent to {len(clients)} "
                                   f"client{'s' if len(clients) != 1 else ''}",
                    data={"phase": started.phase, "clients": clients})
        metrics.phase_started(run.id, run.task_id, started.phase, len(round_row.selected), len(clients))

    def _replies(self, applied: Applied) -> None:
        run, round_row, number = applied.run, applied.round, applied.number
        if round_row is None:
            return
        for result in applied.event.replies.results:
            cid = applied.client_of(result.node_id)
            values = metricvalues.merged(result.metrics, result.metric_lists)
            round_row.phase_received = [*round_row.phase_received, cid]
            metrics.client_result(run.task_id, cid, result.phase, bool(result.error), result.bytes_sent,
                                  result.bytes_received)
            applied.doc("client", result.phase, cid, values, extra={
                "fedops.flower.node_id": str(result.node_id), "fedops.bytes_sent": result.bytes_sent,
                "fedops.bytes_received": result.bytes_received, "error.message": result.error or None})
            record_client_result(applied.db, run.id, number, result.phase, cid, str(result.node_id), values,
                                 error=result.error)
            if result.error:
                round_row.failed = sorted(set(round_row.failed) | {cid})
                _mark_failed(applied.db, cid, f"round {number} {result.phase}: {result.error}",
                             self._agents.is_connected(cid))
                applied.say("client_failed", f"{cid} failed round {number} {result.phase}: {result.error}", cid)
            else:
                round_row.responded = sorted(set(round_row.responded) | {cid})
                metrics.client_metrics(run.id, cid, result.phase, metricvalues.scalars(values))
        metrics.round_clients(run.id, run.task_id, responded=len(round_row.responded), failed=len(round_row.failed),
                              straggling=len(set(round_row.phase_expected) - set(round_row.phase_received)))

    def _phase_finished(self, applied: Applied) -> None:
        finished, run, round_row, number = applied.event.phase_finished, applied.run, applied.round, applied.number
        if round_row is None:
            return
        for node_id in finished.timed_out_node_ids:
            cid = applied.client_of(node_id)
            round_row.failed = sorted(set(round_row.failed) | {cid})
            reason = f"no reply in round {number} {finished.phase} within {round_row.phase_timeout_s:.0f}s"
            record_client_result(applied.db, run.id, number, finished.phase, cid, str(node_id), error=reason)
            _mark_failed(applied.db, cid, reason, self._agents.is_connected(cid))
            metrics.client_result(run.task_id, cid, finished.phase, failed=True)
            applied.say("client_failed", f"{cid}: {reason}", cid)
        metrics.phase_finished(finished.phase, (utcnow() - round_row.phase_started_at).total_seconds()
                               if round_row.phase_started_at is not None else None)
        metrics.round_clients(run.id, run.task_id, failed=len(round_row.failed), straggling=0)
        round_row.phase_expected, round_row.phase_received = [], []
        timed_out = len(finished.timed_out_node_ids)
        summary = (f"{finished.ok}/{finished.sent} replies ok, {timed_out} timed out, {finished.needed} needed")
        label = "initialisation" if number == 0 else f"round {number}"
        applied.say("phase_finished", f"{label} {finished.phase}: {summary}", data={
            "phase": finished.phase, "sent": finished.sent, "ok": finished.ok, "needed": finished.needed,
            "timed_out": timed_out})
        if number == 0 and finished.ok >= finished.needed:
            _close_round(applied, round_row, counted=False)

    def _aggregated(self, applied: Applied) -> None:
        aggregated, round_row = applied.event.aggregated, applied.round
        if round_row is None:
            return
        values = metricvalues.from_proto(aggregated.metrics)
        if aggregated.phase == "train":
            round_row.train_metrics = values
        else:
            round_row.evaluate_metrics = values
        _set_metric_gauges(applied.run, aggregated.phase, values)
        applied.doc("aggregated", aggregated.phase, values=values)
        applied.say("aggregated", f"round {applied.number} {aggregated.phase} metrics aggregated: "
                                  f"{metricvalues.text(values) or 'none'}",
                    data={"phase": aggregated.phase, "metrics": values})

    def _central_evaluation(self, applied: Applied) -> None:
        values = metricvalues.from_proto(applied.event.central_evaluation.metrics)
        applied.run.initial_central_metrics = values
        applied.doc("central", values=values, extra={"message": "initial global model evaluated"})
        applied.say(
            "central_evaluation",
            f"initial global model evaluated: {metricvalues.text(values) or 'no metrics'}",
            data=values,
        )

    def _round_finished(self, applied: Applied) -> None:
        finished, run, round_row, number = applied.event.round_finished, applied.run, applied.round, applied.number
        if round_row is None:
            return
        central = metricvalues.from_proto(finished.central_metrics)
        round_row.central_metrics = central or round_row.central_metrics
        _close_round(applied, round_row, counted=True)
        if not finished.has_model and finished.no_model_reason:
            run.model_note = finished.no_model_reason
        _set_metric_gauges(run, "central", round_row.central_metrics)
        applied.doc("central", values=round_row.central_metrics, extra={
            "fedops.clients.responded": list(round_row.responded), "fedops.clients.failed": list(round_row.failed)})
        applied.say("round_finished", f"round {number}/{run.total_rounds or '?'} finished"
                    + ("" if finished.has_model else f" (no model: {finished.no_model_reason})"),
                    data={"central": dict(round_row.central_metrics), "train": dict(round_row.train_metrics),
                          "evaluate": dict(round_row.evaluate_metrics), "responded": list(round_row.responded),
                          "failed": list(round_row.failed), "has_model": finished.has_model})

    def _app_finished(self, applied: Applied) -> None:
        finished, run = applied.event.app_finished, applied.run
        _close_open_rounds(applied)
        has_models = applied.db.query(ModelRow.id).filter(ModelRow.run_id == run.id).first() is not None
        if not has_models and not run.model_note:
            run.model_note = NO_ROUNDS_NOTE
        if finished.stopped or run.stop_requested:
            asked = (applied.db.query(EventRow).filter(EventRow.run_id == run.id, EventRow.kind == "stop_requested")
                     .order_by(EventRow.seq.desc()).first())
            by = (asked.data or {}).get("by") if asked is not None else None
            outcome, reason = S.RUN_OUTCOME_STOPPED, (f"stopped by {by or 'operator'} after {run.completed_rounds} "
                                                      f"of {run.total_rounds or '?'} rounds")
        elif run.current_round == 0 and not applied.db.query(RoundRow).filter(RoundRow.run_id == run.id).first():
            outcome, reason = S.RUN_OUTCOME_COMPLETED, f"completed: {NO_MESSAGES}"
        else:
            outcome = S.RUN_OUTCOME_COMPLETED
            reason = f"completed {run.completed_rounds} of {run.total_rounds or '?'} rounds"
        applied.end = (outcome, reason)

    def _app_failed(self, applied: Applied) -> None:
        applied.end = (S.RUN_OUTCOME_FAILED, _root_cause(applied, applied.event.app_failed))


class ClientReports:
    """Applies ClientApp-side reports: the node id mapping and each client's own result."""

    def __init__(self, sessions: sessionmaker[Session], bus: EventBus, writer: TelemetryWriter | None) -> None:
        self._sessions = sessions
        self._bus = bus
        self._writer = writer

    async def apply(self, event: agent_pb2.ClientEvent) -> None:
        values = metricvalues.from_proto(event.metrics)
        with self._sessions.begin() as db:
            run = db.get(RunRow, event.run_id)
            if run is None:
                raise NotFound(f"run {event.run_id} not found")
            if event.client_id not in run.client_ids:
                raise InvalidArgument("client_id", f"{event.client_id!r} is not a participant of {run.id}")
            if run.node_clients.get(str(event.node_id)) != event.client_id:  # its first report in this run
                name_node_in_open_rounds(db.connection(), run.id, event.node_id, event.client_id)
                run.node_clients = {**run.node_clients, str(event.node_id): event.client_id}
            # A ClientApp learns its round from the config or the group id, which not every app sets.
            number = event.round or run.current_round
            record_client_result(db, run.id, number, event.phase, event.client_id, str(event.node_id), values,
                                 event.duration_s, event.error)
        if self._writer is not None:
            self._writer.write("round-metrics", {
                "metric.scope": "client-local", "fedops.run.id": event.run_id, "fedops.round": number,
                "fedops.phase": event.phase, "fedops.client.id": event.client_id,
                "fedops.flower.node_id": str(event.node_id), "fedops.duration_s": event.duration_s,
                "metrics": values, "error.message": event.error or None})
        text = (f"{event.client_id} {event.phase} round {number}: "
                + (f"error {event.error}" if event.error else metricvalues.text(values)))
        await self._bus.publish(event.run_id, "client_result", text, round=number, client_id=event.client_id,
                                data={"phase": event.phase, "metrics": values, "duration_s": event.duration_s,
                                      "error": event.error})
