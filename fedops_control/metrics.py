"""Prometheus metrics of the control service (FL lifecycle and control-plane state).

Counters and histograms are updated as reports arrive; gauges that mirror stored state
(runs by state, clients by state, heartbeat ages, waiting phases) are read from the
database at scrape time by :class:`StateCollector`, so they survive restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import enum_label, utcnow
from fedops_common.proto import common_pb2
from fedops_control.agents.sessions import AgentSessions
from fedops_control.state.models import ClientRow, RoundRow, RunRow
from fedops_control.task.strategy import StrategySpec

S = common_pb2
PHASE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

ROUNDS_COMPLETED = Counter("fedops_rounds_completed", "Rounds finished (global model stored)", ["task_id"])
ROUND_DURATION = Histogram("fedops_round_duration_seconds", "Wall time of a round, first send to model stored",
                           ["task_id"], buckets=PHASE_BUCKETS)
PHASE_DURATION = Histogram("fedops_round_phase_duration_seconds", "Wall time of a round phase (train, evaluate)",
                           ["phase"], buckets=PHASE_BUCKETS)
ROUND_CLIENTS = Gauge("fedops_round_clients",
                      "Clients of the current round of a run: selected, responded, failed, straggling",
                      ["run_id", "task_id", "status"])
CLIENT_OUTCOMES = Counter("fedops_round_client_results", "Client results per phase, by outcome (ok, failed)",
                          ["task_id", "phase", "outcome"])
CLIENT_FAILURES = Counter("fedops_client_failures", "Failures of a client (phase error, timeout, lost agent)",
                          ["client_id"])
CLIENT_BYTES = Counter("fedops_client_transfer_bytes", "Bytes exchanged with a client through Flower",
                       ["client_id", "direction"])
# Latest metric values of active runs (scalars only; lists stay in the run views and Elasticsearch).
# Removed when the run finishes, so the series do not grow with runs.
ROUND_METRIC = Gauge("fedops_round_metric", "Latest global metric of a run: central (server-side evaluation), "
                     "train or evaluate (aggregated by the strategy)", ["run_id", "task_id", "scope", "name"])
CLIENT_METRIC = Gauge("fedops_client_metric", "Latest metric a client reported in a run, by phase",
                      ["run_id", "client_id", "phase", "name"])
# The control plane itself (bench/fleet_load.py measures what these show at 100-10,000 agents).
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RPC_DURATION = Histogram("fedops_control_rpc_duration_seconds",
                         "Time to answer a unary RPC of the control service, by method", ["method"],
                         buckets=RPC_BUCKETS)
LOOP_LAG = Histogram("fedops_control_event_loop_lag_seconds",
                     "How late the event loop ran a timer: time blocked by synchronous work",
                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
HEARTBEATS = Counter("fedops_control_heartbeats", "Agent heartbeats processed")
DB_BATCH = Histogram("fedops_control_db_batch_duration_seconds",
                     "Time to persist one batch of agent liveness (last heartbeats) in the database",
                     buckets=RPC_BUCKETS)
DB_BATCH_ROWS = Counter("fedops_control_db_batch_rows", "Clients whose liveness a batch persisted")
REGISTRATION_GROUP = Histogram("fedops_control_registration_group_size",
                               "Registrations committed in one transaction (group commit, agents/enrolment.py)",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
RUNS_STARTED = Counter("fedops_runs_started", "Runs started", ["task_id"])
RUNS_FINISHED = Counter("fedops_runs_finished", "Runs finished, by outcome", ["task_id", "outcome"])


class StateCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, sessions: sessionmaker[Session], agents: AgentSessions) -> None:
        self._sessions = sessions
        self._agents = agents

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runs = GaugeMetricFamily("fedops_runs", "Runs by state and outcome", labels=["state", "outcome"])
        clients = GaugeMetricFamily("fedops_clients", "Registered clients by state (online, training...: holding "
                                     "a session now; offline: not)", labels=["state"])
        connected = GaugeMetricFamily("fedops_clients_connected", "Agents holding a session now")
        age = GaugeMetricFamily("fedops_client_heartbeat_age_seconds", "Seconds since a client's last heartbeat",
                                labels=["client_id"])
        current = GaugeMetricFamily("fedops_run_current_round", "Current round of an active run",
                                    labels=["run_id", "task_id"])
        waiting = GaugeMetricFamily("fedops_run_phase_waiting_seconds",
                                    "How long the current phase of an active run has waited for replies",
                                    labels=["run_id", "task_id", "phase"])
        missing = GaugeMetricFamily("fedops_run_phase_missing_clients",
                                    "Clients of the current phase that have not replied yet",
                                    labels=["run_id", "task_id", "phase"])
        quorum = GaugeMetricFamily("fedops_run_quorum", "Minimum successful clients per round (strategy.min_clients)",
                                   labels=["run_id", "task_id"])
        now = utcnow()
        with self._sessions() as db:
            counts: dict[tuple[str, str], int] = {}
            active = []
            for run in db.query(RunRow).all():
                outcome = enum_label(S.RunOutcome, run.outcome) if run.outcome else ""
                key = (enum_label(S.RunState, run.state), outcome)
                counts[key] = counts.get(key, 0) + 1
                if run.state == S.RUN_STATE_RUNNING:
                    active.append(run)
            for (state, outcome), count in sorted(counts.items()):
                runs.add_metric([state, outcome], count)
            by_state: dict[str, int] = {}
            # Columns only (no rows, no JSON): 10,000 clients take ~20 ms, on the /metrics thread.
            for cid, stored, last in db.query(ClientRow.id, ClientRow.state, ClientRow.last_heartbeat):
                name = enum_label(S.ClientState, self._agents.effective_state(cid, stored))
                by_state[name] = by_state.get(name, 0) + 1
                age.add_metric([cid], self._agents.heartbeat_age_s(cid, last))
            for name, count in sorted(by_state.items()):
                clients.add_metric([name], count)
            for run in active:
                current.add_metric([run.id, run.task_id], run.current_round)
                quorum.add_metric([run.id, run.task_id], StrategySpec.from_dict(run.strategy).min_clients)
                round_row = db.get(RoundRow, (run.id, run.current_round)) if run.current_round else None
                if round_row is not None and round_row.phase_expected and round_row.phase_started_at:
                    outstanding = len(set(round_row.phase_expected) - set(round_row.phase_received))
                    labels = [run.id, run.task_id, round_row.phase]
                    waiting.add_metric(labels, (now - round_row.phase_started_at).total_seconds() if outstanding else 0)
                    missing.add_metric(labels, outstanding)
        connected.add_metric([], self._agents.connected_count())
        yield from (runs, clients, connected, age, current, waiting, missing, quorum)


# ---------------------------------------------------------------- the control plane
def heartbeat() -> None:
    HEARTBEATS.inc()


def db_batch(seconds: float, rows: int) -> None:
    DB_BATCH.observe(seconds)
    DB_BATCH_ROWS.inc(rows)


def registration_group(size: int) -> None:
    REGISTRATION_GROUP.observe(size)


def rpc_answered(method: str, seconds: float) -> None:
    RPC_DURATION.labels(method).observe(seconds)


async def watch_event_loop(interval_s: float = 0.5) -> None:
    """Until cancelled: how late each timer fires is how long the loop was blocked (event-loop lag)."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        LOOP_LAG.observe(max(0.0, loop.time() - expected))


# ---------------------------------------------------------------- the façade the run code calls
def run_started(task_id: str) -> None:
    RUNS_STARTED.labels(task_id).inc()


def run_finished(run_id: str, task_id: str, outcome: str) -> None:
    """Count the outcome and drop the run's own series."""
    RUNS_FINISHED.labels(task_id, outcome).inc()
    forget_run(run_id)


def round_completed(task_id: str, seconds: float) -> None:
    ROUNDS_COMPLETED.labels(task_id).inc()
    ROUND_DURATION.labels(task_id).observe(seconds)


def phase_started(run_id: str, task_id: str, phase: str, selected: int, sent: int) -> None:
    """A phase went out: its clients straggle until they reply; a train phase starts the round's counts."""
    for outcome in ("ok", "failed"):  # export 0 before the first failure: rates and alerts see it
        CLIENT_OUTCOMES.labels(task_id, phase, outcome)
    round_clients(run_id, task_id, selected=selected, straggling=sent,
                  **({"responded": 0, "failed": 0} if phase == "train" else {}))


def phase_finished(phase: str, seconds: float | None) -> None:
    if seconds is not None:
        PHASE_DURATION.labels(phase).observe(seconds)


def round_clients(run_id: str, task_id: str, **counts: int) -> None:
    """The current round's clients by status (selected, responded, failed, straggling)."""
    for status, count in counts.items():
        ROUND_CLIENTS.labels(run_id, task_id, status).set(count)


def client_result(task_id: str, client_id: str, phase: str, failed: bool, sent_bytes: int = 0,
                  received_bytes: int = 0) -> None:
    """One client's reply (or timeout) in a phase."""
    CLIENT_OUTCOMES.labels(task_id, phase, "failed" if failed else "ok").inc()
    if sent_bytes or received_bytes:
        CLIENT_BYTES.labels(client_id, "sent").inc(sent_bytes)
        CLIENT_BYTES.labels(client_id, "received").inc(received_bytes)
    if failed:
        CLIENT_FAILURES.labels(client_id).inc()


def client_failed(client_id: str) -> None:
    """A failure outside a phase's replies (a lost agent, a crashed SuperNode)."""
    CLIENT_FAILURES.labels(client_id).inc()


def global_metrics(run_id: str, task_id: str, scope: str, values: dict[str, float]) -> None:
    for name, value in values.items():
        ROUND_METRIC.labels(run_id, task_id, scope, name).set(value)


def client_metrics(run_id: str, client_id: str, phase: str, values: dict[str, float]) -> None:
    for name, value in values.items():
        CLIENT_METRIC.labels(run_id, client_id, phase, name).set(value)


def forget_run(run_id: str) -> None:
    """Drop the per-run series of a finished run."""
    for gauge in (ROUND_CLIENTS, ROUND_METRIC, CLIENT_METRIC):
        gauge.remove_by_labels({"run_id": run_id})


def register_state_collector(sessions: sessionmaker[Session], agents: AgentSessions) -> StateCollector:
    """Add the collector to the default registry (what /metrics serves)."""
    collector = StateCollector(sessions, agents)
    REGISTRY.register(collector)
    return collector
