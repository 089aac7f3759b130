"""Unit tests of the ServerApp/ClientApp report handlers (fedops_control/run/reports.py).

A real SQLite database (tmp file, migrated by the project's own helpers), a real EventBus and real
AgentSessions; only the run manager's callbacks (round notice, end of run) are small fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fedops_common import metricvalues
from fedops_common.proto import agent_pb2, common_pb2
from fedops_control.agents.sessions import AgentSessions
from fedops_control.errors import InvalidArgument, NotFound
from fedops_control.run.events import EventBus
from fedops_control.run.reports import (
    GRID_ONLY_NOTE,
    NO_MESSAGES,
    NO_ROUNDS_NOTE,
    ClientReports,
    ServerReports,
    record_client_result,
)
from fedops_control.state.models import (
    ClientResultRow,
    ClientRow,
    EventRow,
    ModelRow,
    RoundRow,
    RunRow,
    TaskRow,
)

A = agent_pb2
S = common_pb2
RUN = "run-1"
TASK = "task-1"
CLIENTS = ["client-a", "client-b", "client-c"]
NODES = {"101": "client-a", "102": "client-b", "103": "client-c"}
NODE_OF = {cid: int(node) for node, cid in NODES.items()}


class Harness:
    """The report handlers wired to a fresh database, with the manager's callbacks recorded."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.loop = asyncio.new_event_loop()
        self.bus = EventBus(sessions)
        self.agents = AgentSessions()
        for client_id in ("client-a", "client-b", "client-c"):  # their agents hold sessions
            self.agents.open(client_id)
        self.ended: list[tuple[str, int, str]] = []
        self.notices: list[int] = []
        self.server = ServerReports(sessions, self.bus, self.agents, None, self._round_notice,
                                    lambda run_id, outcome, reason: self.ended.append((run_id, outcome, reason)))
        self.client = ClientReports(sessions, self.bus, None)

    def _round_notice(self, db: Session, run: RunRow, number: int) -> agent_pb2.AgentCommand:
        self.notices.append(number)
        return agent_pb2.AgentCommand()

    # ------------------------------------------------------------ sending reports
    def send(self, round: int = 0, run_id: str = RUN, **kind: Any) -> bool:
        return self.loop.run_until_complete(self.server.apply(A.ServerEvent(run_id=run_id, round=round, **kind)))

    def client_event(self, **fields: Any) -> None:
        fields.setdefault("run_id", RUN)
        self.loop.run_until_complete(self.client.apply(A.ClientEvent(**fields)))

    def strategy(self, rounds: int = 2, style: int = S.API_STYLE_MESSAGE_STRATEGY) -> None:
        self.send(strategy_started=A.StrategyStarted(api_style=style, strategy="FedAvg", num_rounds=rounds,
                                                     timeout_s=30))

    def phase(self, number: int, phase: str, clients: list[str] = CLIENTS) -> None:
        self.send(number, phase_started=A.PhaseStarted(phase=phase, node_ids=[NODE_OF[c] for c in clients],
                                                       timeout_s=30))

    def replies(self, number: int, phase: str, ok: dict[str, dict[str, Any]] | None = None,
                errors: dict[str, str] | None = None) -> None:
        results = []
        for cid, values in (ok or {}).items():
            result = S.ClientRoundResult(node_id=NODE_OF[cid], phase=phase)
            metricvalues.fill(result.metrics, result.metric_lists, values)
            results.append(result)
        for cid, error in (errors or {}).items():
            results.append(S.ClientRoundResult(node_id=NODE_OF[cid], phase=phase, error=error))
        self.send(number, replies=A.PhaseReplies(results=results))

    def phase_finished(self, number: int, phase: str, sent: int, ok: int, needed: int,
                       timed_out: list[str] = ()) -> None:
        self.send(number, phase_finished=A.PhaseFinished(phase=phase, sent=sent, ok=ok, needed=needed,
                                                         timed_out_node_ids=[NODE_OF[c] for c in timed_out]))

    def round_finished(self, number: int, has_model: bool = True, reason: str = "",
                       central: dict[str, Any] | None = None) -> None:
        self.send(number, round_finished=A.RoundFinished(has_model=has_model, no_model_reason=reason,
                                                         central_metrics=metricvalues.to_proto(central or {})))

    def full_round(self, number: int, central: dict[str, Any] | None = None, has_model: bool = True,
                   reason: str = "") -> None:
        """One Message-API round: train and evaluate on every client, all replies ok."""
        self.phase(number, "train")
        self.replies(number, "train", ok={c: {"loss": 1.0 / number} for c in CLIENTS})
        self.phase_finished(number, "train", sent=3, ok=3, needed=2)
        self.send(number, aggregated=A.Aggregated(phase="train", metrics=metricvalues.to_proto({"loss": 0.5})))
        self.phase(number, "evaluate")
        self.replies(number, "evaluate", ok={c: {"accuracy": 0.8} for c in CLIENTS})
        self.phase_finished(number, "evaluate", sent=3, ok=3, needed=2)
        self.round_finished(number, has_model=has_model, reason=reason, central=central)

    # ------------------------------------------------------------ reading rows
    def run(self) -> RunRow:
        with self.sessions() as db:
            return db.get(RunRow, RUN)

    def round(self, number: int) -> RoundRow | None:
        with self.sessions() as db:
            return db.get(RoundRow, (RUN, number))

    def results(self, **filters: Any) -> list[ClientResultRow]:
        with self.sessions() as db:
            return db.query(ClientResultRow).filter_by(run_id=RUN, **filters).order_by(ClientResultRow.id).all()

    def events(self, kind: str) -> list[EventRow]:
        return [e for e in self.bus.since(RUN, 0) if e.kind == kind]

    def client_state(self, cid: str) -> tuple[int, str]:
        with self.sessions() as db:
            row = db.get(ClientRow, cid)
            return row.state, row.state_reason

    def set_run(self, **values: Any) -> None:
        with self.sessions.begin() as db:
            run = db.get(RunRow, RUN)
            for key, value in values.items():
                setattr(run, key, value)


@pytest.fixture
def h(db_sessions: sessionmaker[Session]) -> Iterator[Harness]:
    sessions = db_sessions
    with sessions.begin() as db:
        db.add(TaskRow(id=TASK, title="t", app={"local_path": "/nowhere"}, strategy={}))
        for cid in CLIENTS:
            db.add(ClientRow(id=cid, device={}, state=S.CLIENT_STATE_TRAINING))
        db.flush()  # no ORM relationships: the task must exist before the run (foreign key)
        db.add(RunRow(id=RUN, task_id=TASK, state=S.RUN_STATE_RUNNING, client_ids=list(CLIENTS), total_rounds=3,
                      node_clients=dict(NODES)))
    harness = Harness(sessions)
    yield harness
    harness.loop.close()


# ---------------------------------------------------------------- validation

def test_event_without_kind_is_invalid_argument(h: Harness) -> None:
    with pytest.raises(InvalidArgument) as err:
        h.send()
    assert err.value.field == "event"
    assert h.bus.since(RUN, 0) == []


def test_negative_round_and_unknown_run_are_refused(h: Harness) -> None:
    with pytest.raises(InvalidArgument):
        h.send(-1, app_started=A.AppStarted())
    with pytest.raises(NotFound):
        h.send(run_id="no-such-run", app_started=A.AppStarted())


def test_client_event_from_a_non_participant_is_refused(h: Harness) -> None:
    with pytest.raises(InvalidArgument):
        h.client_event(client_id="stranger", node_id=999, round=1, phase="train")
    assert h.results() == []


# ---------------------------------------------------------------- rounds, phases, counting

def test_message_strategy_run_records_rounds_phases_and_completes(h: Harness) -> None:
    h.send(app_started=A.AppStarted(flower_run_id="77"))
    h.strategy(rounds=2)
    run = h.run()
    assert run.api_style == S.API_STYLE_MESSAGE_STRATEGY
    assert run.total_rounds == 2  # what the app runs replaces the planned 3

    h.send(0, central_evaluation=A.CentralEvaluation(metrics=metricvalues.to_proto({"accuracy": 0.1})))
    assert h.run().initial_central_metrics == {"accuracy": 0.1}

    h.phase(1, "train")
    round1 = h.round(1)
    assert round1.phase == "train"
    assert round1.selected == sorted(CLIENTS)
    assert round1.phase_expected == CLIENTS
    assert round1.finished_at is None
    assert h.run().current_round == 1

    h.replies(1, "train", ok={"client-a": {"loss": 0.9}, "client-b": {"loss": 0.7}})
    round1 = h.round(1)
    assert round1.responded == ["client-a", "client-b"]
    assert round1.phase_received == ["client-a", "client-b"]
    assert {r.client_id: r.metrics for r in h.results(round=1, phase="train")} == {
        "client-a": {"loss": 0.9}, "client-b": {"loss": 0.7}}
    assert {r.node_id for r in h.results(round=1)} == {"101", "102"}

    h.phase_finished(1, "train", sent=3, ok=2, needed=2, timed_out=["client-c"])
    round1 = h.round(1)
    assert round1.failed == ["client-c"]
    assert round1.phase_expected == [] and round1.phase_received == []
    [timeout] = h.results(round=1, phase="train", client_id="client-c")
    assert timeout.error == "no reply in round 1 train within 30s"
    assert h.client_state("client-c") == (S.CLIENT_STATE_FAILED, "no reply in round 1 train within 30s")
    # A client whose agent is gone left the run: offline, not failed.
    queue = h.agents.open("client-c")
    h.agents.close("client-c", queue)
    h.phase_finished(1, "evaluate", sent=3, ok=2, needed=2, timed_out=["client-c"])
    assert h.client_state("client-c") == (S.CLIENT_STATE_OFFLINE, "no reply in round 1 evaluate within 30s: "
                                                                  "left the run (its agent disconnected)")

    h.send(1, aggregated=A.Aggregated(phase="train", metrics=metricvalues.to_proto({"loss": 0.8})))
    h.phase(1, "evaluate", clients=["client-a", "client-b"])
    round1 = h.round(1)
    assert round1.phase == "evaluate"
    assert round1.selected == sorted(CLIENTS)  # an evaluate step does not shrink the round's selection
    h.send(1, aggregated=A.Aggregated(phase="evaluate", metrics=metricvalues.to_proto({"accuracy": 0.6})))
    h.round_finished(1, central={"accuracy": 0.65})

    round1 = h.round(1)
    assert round1.phase == "done" and round1.finished_at is not None
    assert round1.train_metrics == {"loss": 0.8}
    assert round1.evaluate_metrics == {"accuracy": 0.6}
    assert round1.central_metrics == {"accuracy": 0.65}
    assert h.run().completed_rounds == 1

    h.full_round(2)
    assert h.run().completed_rounds == 2
    h.send(app_finished=A.AppFinished())
    assert h.ended == [(RUN, S.RUN_OUTCOME_COMPLETED, "completed 2 of 2 rounds")]
    # The events went through the real bus and are stored for WatchRun.
    kinds = [e.kind for e in h.bus.since(RUN, 0)]
    assert kinds[:2] == ["app_started", "strategy_started"]
    assert kinds.count("round_finished") == 2
    assert [e.round for e in h.events("round_finished")] == [1, 2]


def test_round_zero_is_never_counted(h: Harness) -> None:
    h.strategy(rounds=1)
    # The older API's initial get_parameters exchange with one client: round 0.
    h.phase(0, "get_parameters", clients=["client-a"])
    assert h.notices == []  # no round notice for the initialisation
    h.replies(0, "get_parameters", ok={"client-a": {}})
    h.phase_finished(0, "get_parameters", sent=1, ok=1, needed=1)
    round0 = h.round(0)
    assert round0.phase == "done" and round0.finished_at is not None
    h.round_finished(0)  # even an explicit end of round 0 does not count
    assert h.run().completed_rounds == 0
    h.full_round(1)
    assert h.run().completed_rounds == 1
    h.send(1, app_finished=A.AppFinished())
    assert h.run().completed_rounds == 1
    assert h.ended[-1][2] == "completed 1 of 1 rounds"


def test_round_zero_stays_open_when_its_step_missed_the_quorum(h: Harness) -> None:
    h.strategy(rounds=1)
    h.phase(0, "get_parameters", clients=["client-a"])
    h.phase_finished(0, "get_parameters", sent=1, ok=0, needed=1, timed_out=["client-a"])
    assert h.round(0).finished_at is None
    assert h.round(0).failed == ["client-a"]


def test_grid_only_rounds_close_when_the_next_starts_and_round_zero_is_not_counted(h: Harness) -> None:
    # No strategy_started: the app drives the Grid itself.
    h.phase(0, "query", clients=["client-a"])
    run = h.run()
    assert run.api_style == S.API_STYLE_GRID_ONLY
    assert run.model_note == GRID_ONLY_NOTE
    h.phase(1, "train")
    assert h.round(0).phase == "done"
    assert h.run().completed_rounds == 0
    h.phase(2, "train")
    assert h.round(1).phase == "done"
    assert h.round(2).finished_at is None
    assert h.run().completed_rounds == 1
    h.send(2, app_finished=A.AppFinished())
    assert h.round(2).phase == "done"
    assert h.run().completed_rounds == 2
    # total_rounds is the planned 3 (no strategy told us otherwise)
    assert h.ended == [(RUN, S.RUN_OUTCOME_COMPLETED, "completed 2 of 3 rounds")]
    assert h.run().model_note == GRID_ONLY_NOTE  # not overwritten by the generic note


def test_strategy_rounds_do_not_close_when_a_later_round_starts(h: Harness) -> None:
    """Only a Grid-only app's rounds end by the next round starting; a strategy reports its ends."""
    h.strategy(rounds=3)
    h.phase(1, "train")
    h.phase(2, "train")
    assert h.round(1).finished_at is not None  # closed...
    assert h.run().completed_rounds == 0     # ...but not counted: the strategy never said it finished


def test_round_notice_goes_to_connected_clients_of_rounds_from_one(h: Harness) -> None:
    queue_a = h.agents.open("client-a")
    h.strategy()
    h.phase(1, "train")
    h.phase(1, "evaluate")  # same round: no second notice
    assert h.notices == [1]
    assert queue_a.qsize() == 1  # client-b and client-c hold no session: nothing queued, no error


def test_unknown_node_is_named_by_its_node_id(h: Harness) -> None:
    h.strategy()
    h.send(1, phase_started=A.PhaseStarted(phase="train", node_ids=[555], timeout_s=5))
    assert h.round(1).selected == ["node:555"]


# ---------------------------------------------------------------- client results and failures

def _client_error_first(h: Harness) -> None:
    h.client_event(client_id="client-b", node_id=102, round=1, phase="train", duration_s=2.5,
                   error="ValueError: bad shard")
    h.replies(1, "train", errors={"client-b": "ValueError: bad shard (from the Grid)"})


def _reply_error_first(h: Harness) -> None:
    h.replies(1, "train", errors={"client-b": "ValueError: bad shard (from the Grid)"})
    h.client_event(client_id="client-b", node_id=102, round=1, phase="train", duration_s=2.5,
                   error="ValueError: bad shard")


@pytest.mark.parametrize("order, first_error", [
    (_client_error_first, "ValueError: bad shard"),
    (_reply_error_first, "ValueError: bad shard (from the Grid)"),
])
def test_client_failure_recorded_once_whichever_report_comes_first(h: Harness, order, first_error) -> None:
    h.strategy()
    h.phase(1, "train")
    order(h)
    [row] = h.results(round=1, phase="train", client_id="client-b")
    assert row.error == first_error  # the first error is kept, not overwritten
    assert row.duration_s == 2.5     # the ClientApp's own duration survives the Grid's reply
    assert row.node_id == "102"
    assert h.round(1).failed == ["client-b"]
    assert h.round(1).responded == []
    state, reason = h.client_state("client-b")
    assert state == S.CLIENT_STATE_FAILED
    assert reason.startswith("round 1 train: ValueError: bad shard")
    assert len(h.events("client_failed")) == 1


def test_client_event_and_reply_merge_metrics_into_one_row(h: Harness) -> None:
    h.strategy()
    h.phase(1, "train")
    h.client_event(client_id="client-a", node_id=101, round=1, phase="train", duration_s=1.25,
                   metrics=metricvalues.to_proto({"local-steps": 10}))
    h.replies(1, "train", ok={"client-a": {"loss": 0.5}})
    [row] = h.results(client_id="client-a")
    assert row.metrics == {"local-steps": 10.0, "loss": 0.5}
    assert row.duration_s == 1.25
    assert row.error == ""


def test_client_event_without_round_takes_the_runs_current_round(h: Harness) -> None:
    h.strategy()
    h.phase(2, "train")
    h.client_event(client_id="client-a", node_id=101, phase="train")  # round 0: the app did not say
    assert [r.round for r in h.results(client_id="client-a")] == [2]


def test_client_event_learns_the_node_mapping(h: Harness) -> None:
    h.set_run(node_clients={})
    h.client_event(client_id="client-c", node_id=4242, round=1, phase="train")
    assert h.run().node_clients == {"4242": "client-c"}


def test_a_phase_started_before_its_nodes_were_named_is_renamed_when_they_are(h: Harness) -> None:
    """With warm ServerApps round 1 can start before the agents said which node they are: the round
    names those nodes ``node:<id>`` until then, and by client once the name arrives, from the
    ClientApp's first report or the agent's "connected as node N" status. Finished rounds stay."""
    from types import SimpleNamespace

    from fedops_control.server.agent_servicer import _write_status

    h.set_run(node_clients={})
    h.strategy()
    h.phase(1, "train")
    h.replies(1, "train", ok={"client-c": {"loss": 1.0}})
    assert h.round(1).phase_expected == ["node:101", "node:102", "node:103"]
    h.client_event(client_id="client-a", node_id=101, round=1, phase="train")
    with h.sessions.begin() as db:  # the agent's status, as the agent servicer stores it
        status = A.StatusChange(state=S.CLIENT_STATE_TRAINING, run_id=RUN, node_id=102)
        _write_status(db.connection(), "client-b", SimpleNamespace(state=S.CLIENT_STATE_TRAINING, state_reason="",
                                                                     current_run_id=RUN), status)
    one = h.round(1)
    assert one.phase_expected == ["client-a", "client-b", "node:103"]
    assert one.selected == ["client-a", "client-b", "node:103"]
    assert one.phase_received == one.responded == ["node:103"]
    assert h.run().node_clients == {"101": "client-a", "102": "client-b"}
    with h.sessions.begin() as db:
        db.get(RoundRow, (RUN, 1)).finished_at = one.started_at
    h.client_event(client_id="client-c", node_id=103, round=1, phase="train")
    assert h.round(1).selected == ["client-a", "client-b", "node:103"]  # finished: as it was recorded


def test_record_client_result_is_one_row_per_client_round_phase(h: Harness) -> None:
    with h.sessions.begin() as db:
        assert record_client_result(db, RUN, 1, "train", "client-a", "101", {"x": 1.0}, 3.0) is True
        db.flush()
        assert record_client_result(db, RUN, 1, "train", "client-a", "", {"y": [1.0, 2.0]}, 0.0, "E: late") is False
        db.flush()
        assert record_client_result(db, RUN, 1, "evaluate", "client-a") is True
        db.flush()
        assert record_client_result(db, RUN, 1, "train", "client-a", error="E: later") is False
    rows = h.results(phase="train")
    assert len(rows) == 1
    assert rows[0].metrics == {"x": 1.0, "y": [1.0, 2.0]}
    assert rows[0].node_id == "101" and rows[0].duration_s == 3.0
    assert rows[0].error == "E: late"
    assert len(h.results()) == 2


def test_list_metrics_are_stored(h: Harness) -> None:
    h.strategy()
    h.phase(1, "train")
    h.replies(1, "train", ok={"client-a": {"loss": 0.5, "per-class": [0.1, 0.2, 0.3]}})
    [row] = h.results(client_id="client-a")
    assert row.metrics == {"loss": 0.5, "per-class": [0.1, 0.2, 0.3]}
    h.send(1, aggregated=A.Aggregated(phase="train", metrics=metricvalues.to_proto({"hist": [1.0, 2.0], "n": 3})))
    h.round_finished(1, central={"confusion": [4.0, 5.0], "accuracy": 0.9})
    round1 = h.round(1)
    assert round1.train_metrics == {"hist": [1.0, 2.0], "n": 3.0}
    assert round1.central_metrics == {"confusion": [4.0, 5.0], "accuracy": 0.9}


def test_round_finished_without_central_metrics_keeps_earlier_ones(h: Harness) -> None:
    h.strategy()
    h.phase(1, "train")
    with h.sessions.begin() as db:
        db.get(RoundRow, (RUN, 1)).central_metrics = {"accuracy": 0.5}
    h.round_finished(1)
    assert h.round(1).central_metrics == {"accuracy": 0.5}


# ---------------------------------------------------------------- model note and the end of the app

def test_model_note_for_rounds_without_a_model(h: Harness) -> None:
    h.strategy(rounds=1)
    h.full_round(1, has_model=False, reason="aggregate_fit returned no parameters")
    assert h.run().model_note == "aggregate_fit returned no parameters"
    [event] = h.events("round_finished")
    assert "(no model: aggregate_fit returned no parameters)" in event.message
    h.send(1, app_finished=A.AppFinished())
    assert h.run().model_note == "aggregate_fit returned no parameters"  # the specific note stays


def test_app_finished_without_models_says_nothing_was_stored(h: Harness) -> None:
    h.strategy(rounds=1)
    h.full_round(1, has_model=True)  # the app said so, but nothing reached the store
    h.send(1, app_finished=A.AppFinished())
    assert h.run().model_note == NO_ROUNDS_NOTE


def test_app_finished_with_a_stored_model_leaves_the_note_empty(h: Harness) -> None:
    h.strategy(rounds=1)
    h.full_round(1)
    with h.sessions.begin() as db:
        db.add(ModelRow(id="model-1", task_id=TASK, run_id=RUN, round=1, version=1, sha256="0" * 64, size_bytes=1,
                        path="/x"))
    h.send(1, app_finished=A.AppFinished())
    assert h.run().model_note == ""
    assert h.ended == [(RUN, S.RUN_OUTCOME_COMPLETED, "completed 1 of 1 rounds")]


def test_app_finished_stopped(h: Harness) -> None:
    h.strategy(rounds=3)
    h.full_round(1)
    h.send(1, app_finished=A.AppFinished(stopped=True))
    assert h.ended == [(RUN, S.RUN_OUTCOME_STOPPED, "stopped by operator after 1 of 3 rounds")]


def test_cooperative_stop_is_acknowledged_and_ends_as_stopped(h: Harness) -> None:
    h.strategy(rounds=3)
    assert h.send(1, phase_started=A.PhaseStarted(phase="train", node_ids=[101])) is False
    h.set_run(stop_requested="cooperative")
    assert h.send(1, round_finished=A.RoundFinished(has_model=False)) is True
    h.send(1, app_finished=A.AppFinished())  # the app does not say it was stopped; the run row does
    assert h.ended == [(RUN, S.RUN_OUTCOME_STOPPED, "stopped by operator after 1 of 3 rounds")]


def test_a_stopped_run_names_who_asked_for_the_stop(h: Harness) -> None:
    h.strategy(rounds=3)
    h.full_round(1)
    with h.sessions.begin() as db:
        db.add(EventRow(run_id=RUN, kind="stop_requested", message="stop requested by otto", data={"by": "otto"}))
    h.set_run(stop_requested="cooperative")
    h.send(1, app_finished=A.AppFinished())
    assert h.ended == [(RUN, S.RUN_OUTCOME_STOPPED, "stopped by otto after 1 of 3 rounds")]


def test_app_finished_without_any_message(h: Harness) -> None:
    h.send(app_started=A.AppStarted())
    h.strategy(rounds=0)  # rounds unknown to the app wrapper: the planned count stays
    h.send(central_evaluation=A.CentralEvaluation(metrics=metricvalues.to_proto({"accuracy": 0.1})))
    h.send(app_finished=A.AppFinished(message="done"))
    assert h.ended == [(RUN, S.RUN_OUTCOME_COMPLETED, f"completed: {NO_MESSAGES}")]
    assert h.run().total_rounds == 3
    assert h.run().model_note == NO_ROUNDS_NOTE


def test_app_finished_with_unknown_total_rounds(h: Harness) -> None:
    h.set_run(total_rounds=0)
    h.phase(1, "train")  # grid only
    h.send(1, app_finished=A.AppFinished())
    assert h.ended == [(RUN, S.RUN_OUTCOME_COMPLETED, "completed 1 of ? rounds")]


def test_app_failed_names_the_most_common_client_error_first(h: Harness) -> None:
    h.strategy()
    h.phase(1, "train")
    h.replies(1, "train", errors={"client-c": "ValueError: boom", "client-a": "ValueError: boom",
                                  "client-b": "MemoryError: out of memory"})
    h.send(1, app_failed=A.AppFailed(error_type="RuntimeError", message="quorum not met",
                                     quorum=A.QuorumFailure(phase="train", sent=3, ok=0, needed=2)))
    [(run_id, outcome, reason)] = h.ended
    assert (run_id, outcome) == (RUN, S.RUN_OUTCOME_FAILED)
    assert reason == ("ValueError: boom on client-a (and 1 more); 1 other error in the client results; "
                      "round 1 train: 0 of 3 replies succeeded, 2 needed for the quorum")


def test_app_failed_counts_only_the_failed_step(h: Harness) -> None:
    h.strategy()
    h.phase(1, "train")
    h.replies(1, "train", ok={"client-a": {}, "client-b": {}}, errors={"client-c": "OSError: disk"})
    h.phase_finished(1, "train", sent=3, ok=2, needed=2)
    h.phase(1, "evaluate", clients=["client-a", "client-b"])
    h.replies(1, "evaluate", errors={"client-b": "KeyError: 'label'"})
    h.send(1, app_failed=A.AppFailed(quorum=A.QuorumFailure(phase="evaluate", sent=1, ok=0, needed=1)))
    assert h.ended[-1][2] == ("KeyError: 'label' on client-b; "
                              "round 1 evaluate: 0 of 1 reply succeeded, 1 needed for the quorum")


def test_app_failed_on_timeouts_only_names_the_step(h: Harness) -> None:
    h.strategy()
    h.phase(1, "train", clients=["client-a"])
    h.phase_finished(1, "train", sent=1, ok=0, needed=1, timed_out=["client-a"])
    h.send(1, app_failed=A.AppFailed(quorum=A.QuorumFailure(phase="train", sent=1, ok=0, needed=1, timed_out=1)))
    # the timeout is recorded as the client's error, so it is the cause
    assert h.ended[-1][2] == ("no reply in round 1 train within 30s on client-a; "
                              "round 1 train: 0 of 1 reply succeeded, 1 needed for the quorum")


def test_app_failed_quorum_without_client_errors(h: Harness) -> None:
    h.strategy()
    h.phase(2, "train")
    h.send(2, app_failed=A.AppFailed(quorum=A.QuorumFailure(phase="train", sent=3, ok=1, needed=2)))
    assert h.ended == [(RUN, S.RUN_OUTCOME_FAILED, "round 2 train: 1 of 3 replies succeeded, 2 needed for the quorum")]


def test_app_failed_without_quorum_is_the_exception(h: Harness) -> None:
    h.send(app_failed=A.AppFailed(error_type="ImportError", message="no module named torch"))
    h.send(app_failed=A.AppFailed(message="plain message"))
    assert h.ended == [(RUN, S.RUN_OUTCOME_FAILED, "ImportError: no module named torch"),
                       (RUN, S.RUN_OUTCOME_FAILED, "plain message")]


def test_on_end_is_called_only_by_the_end_reports(h: Harness) -> None:
    h.send(app_started=A.AppStarted())
    h.strategy()
    h.full_round(1)
    assert h.ended == []
