"""Stuck-run diagnosis: why is this run waiting, for whom, and for how much longer."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import utcnow
from fedops_common.proto import common_pb2
from fedops_control.agents.sessions import AgentSessions
from fedops_control.errors import NotFound
from fedops_control.state.models import ClientRow, EventRow, RoundRow, RunRow
from fedops_control.task.strategy import StrategySpec

S = common_pb2
SUPERLINK_STATUS = "superlink_status"  # run events a launcher publishes while the SuperLink starts or changes


def _missing(db: Session, agents: AgentSessions, client_ids: list[str]) -> list[common_pb2.MissingClient]:
    out = []
    for cid in client_ids:
        client = db.get(ClientRow, cid)
        if client is None:
            out.append(common_pb2.MissingClient(client_id=cid, reason="unknown client (its node never reported)"))
            continue
        age = agents.heartbeat_age_s(cid, client.last_heartbeat)
        connected = agents.is_connected(cid)
        if not connected:
            reason = f"agent offline (last heartbeat {age:.0f}s ago)"
        elif client.state == S.CLIENT_STATE_FAILED:
            reason = f"failed: {client.state_reason}"
        else:
            reason = f"agent online (heartbeat {age:.0f}s ago), reply still pending"
        out.append(common_pb2.MissingClient(
            client_id=cid, state=S.ClientState.ValueType(client.state), heartbeat_age_s=age, reason=reason,
            connected=connected))
    return out


def diagnose(sessions: sessionmaker[Session], agents: AgentSessions, run_id: str) -> common_pb2.Diagnosis:
    """Explain the current wait of a run in numbers and one plain sentence."""
    with sessions() as db:
        run = db.get(RunRow, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        quorum = StrategySpec.from_dict(run.strategy).min_clients
        diag = common_pb2.Diagnosis(
            run_id=run_id, state=S.RunState.ValueType(run.state), round=run.current_round, clients_needed=quorum)
        if run.state == S.RUN_STATE_FINISHED:
            outcome = common_pb2.RunOutcome.Name(S.RunOutcome.ValueType(run.outcome)).split("_")[-1].lower()
            diag.summary = f"Run {outcome} after {run.completed_rounds} rounds: {run.reason}"  # completed ones
            return diag
        if run.state != S.RUN_STATE_RUNNING:
            diag.waiting = True
            state = common_pb2.RunState.Name(S.RunState.ValueType(run.state)).split("_")[-1].lower()
            diag.summary = f"Run is {state}: launching SuperLink and SuperNodes."
            # A launcher that reports on the SuperLink's start (Kubernetes: the pod's state) says why it waits.
            status = (db.query(EventRow).filter(EventRow.run_id == run_id, EventRow.kind == SUPERLINK_STATUS)
                      .order_by(EventRow.seq.desc()).first())
            if status is not None:
                diag.summary += f" SuperLink: {status.message.rstrip('.')}."
            return diag
        round_row = db.get(RoundRow, (run_id, run.current_round)) if run.current_round else None
        if round_row is None or round_row.phase in ("done", "failed"):
            # Between rounds, or before the first: the strategy waits for enough nodes.
            mapped = set(run.node_clients.values())
            missing_ids = [cid for cid in run.client_ids if cid not in mapped]
            diag.phase = "waiting_for_nodes" if round_row is None else "between_rounds"
            diag.clients_expected = len(run.client_ids)
            diag.clients_have = len(run.client_ids) - len(missing_ids)
            diag.missing.extend(_missing(db, agents, missing_ids) if round_row is None else [])
            diag.waiting = round_row is None
            diag.summary = (f"Round {run.current_round + 1} has not started: waiting for the strategy to sample nodes; "
                            f"{len(run.client_ids)} clients were commanded to join.")
            return diag
        expected = list(round_row.phase_expected)
        received = list(round_row.phase_received)
        missing_ids = [cid for cid in expected if cid not in received]
        elapsed = (utcnow() - round_row.phase_started_at).total_seconds() if round_row.phase_started_at else 0.0
        diag.phase = round_row.phase
        diag.clients_expected = len(expected)
        diag.clients_have = len([cid for cid in received if cid not in round_row.failed])
        diag.clients_needed = min(quorum, len(expected)) if expected else quorum
        diag.missing.extend(_missing(db, agents, missing_ids))
        diag.phase_elapsed_s = elapsed
        diag.time_left_s = max(0.0, round_row.phase_timeout_s - elapsed)
        diag.waiting = bool(missing_ids)
        if missing_ids:
            who = "; ".join(f"{m.client_id}: {m.reason}" for m in diag.missing)
            diag.summary = (f"Round {round_row.number} {round_row.phase} is waiting for {len(missing_ids)} of "
                            f"{len(expected)} clients (have {diag.clients_have}, need {diag.clients_needed}); "
                            f"{diag.time_left_s:.0f}s left before the round timeout. Missing: {who}.")
        else:
            diag.summary = f"Round {round_row.number} {round_row.phase}: all {len(expected)} replies are in."
        return diag
