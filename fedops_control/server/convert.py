"""Database rows -> protobuf messages."""

from __future__ import annotations

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from fedops_common import metricvalues
from fedops_common.convert import dict_to_struct, to_timestamp
from fedops_common.proto import common_pb2
from fedops_control.agents.sessions import AgentSessions
from fedops_control.clients.labels import labels_of
from fedops_control.clients.selection import LabelSelection, selection_to_proto
from fedops_control.state.models import (
    ClientResultRow,
    ClientRow,
    DataStatusRow,
    MembershipRow,
    ModelRow,
    RoundRow,
    RunRow,
    TaskRow,
)
from fedops_control.task.strategy import StrategySpec


def task_to_proto(db: Session, row: TaskRow) -> common_pb2.Task:
    """Task with membership."""
    members = db.query(MembershipRow).filter(MembershipRow.task_id == row.id).all()
    app = common_pb2.AppReference()
    if "local_path" in row.app:
        app.local_path = row.app["local_path"]
    else:
        app.git.CopyFrom(common_pb2.GitSource(**row.app["git"]))
    return common_pb2.Task(
        id=row.id, title=row.title, description=row.description, tags=row.tags, app=app,
        strategy=StrategySpec.from_dict(row.strategy).to_proto(),
        hyperparameters=dict_to_struct(row.hyperparameters), client_config=dict_to_struct(row.client_config),
        selected_client_ids=sorted(m.client_id for m in members if m.selected),
        enrolled_client_ids=sorted(m.client_id for m in members if m.enrolled),
        created_at=to_timestamp(row.created_at), updated_at=to_timestamp(row.updated_at),
        label_selection=(LabelSelection.from_dict(row.label_selection).to_proto()
                         if row.label_selection is not None else None))


def client_to_proto(db: Session, row: ClientRow, agents: AgentSessions) -> common_pb2.Client:
    """Client with liveness; a client without a session shows as offline unless it failed."""
    return clients_to_proto(db, [row], agents)[0]


# Built once, with the page's ids bound at each call: a statement built per call (``in_(ids)``) left
# about 30 objects of cyclic garbage per GetClient or page of clients for the collector to free (at
# 10,000 agents most of the ~1,900 objects each young collection freed; the pauses themselves came
# from the live young objects, see tune_garbage_collector in server/app.py).
_MEMBERSHIPS_OF = select(MembershipRow.task_id, MembershipRow.client_id).where(
    MembershipRow.client_id.in_(bindparam("ids", expanding=True)))
_LATEST_STATUS_OF = select(DataStatusRow).where(DataStatusRow.id.in_(
    select(func.max(DataStatusRow.id)).where(DataStatusRow.client_id.in_(bindparam("ids", expanding=True)))
    .group_by(DataStatusRow.client_id)))


def clients_to_proto(db: Session, rows: list[ClientRow], agents: AgentSessions) -> list[common_pb2.Client]:
    """A page of clients in four queries, however long: their memberships, labels and latest data status
    are read for the whole page (one query each per client cost 1.8 s to list 1,000 clients)."""
    ids = [row.id for row in rows]
    tasks: dict[str, list[str]] = {cid: [] for cid in ids}
    for task_id, cid in db.execute(_MEMBERSHIPS_OF, {"ids": ids}):
        tasks[cid].append(task_id)
    latest = {r.client_id: r for r in db.scalars(_LATEST_STATUS_OF, {"ids": ids})}
    labels = labels_of(db, ids)
    return [common_pb2.Client(
        id=row.id,
        device=common_pb2.DeviceInfo(**row.device),
        state=common_pb2.ClientState.ValueType(agents.effective_state(row.id, row.state)),
        state_reason=row.state_reason,
        last_heartbeat=to_timestamp(agents.last_seen.get(row.id) or row.last_heartbeat),
        heartbeat_age_s=agents.heartbeat_age_s(row.id, row.last_heartbeat),
        enrolled_task_ids=sorted(tasks[row.id]),
        current_run_id=row.current_run_id,
        registered_at=to_timestamp(row.registered_at),
        metrics_address=row.metrics_address,
        data_status=data_status_to_proto(latest[row.id]) if row.id in latest else None,
        labels=labels[row.id],
        name=row.name,
    ) for row in rows]


def data_status_to_proto(row: DataStatusRow) -> common_pb2.DataStatus:
    """One stored data status report."""
    return common_pb2.DataStatus(client_id=row.client_id, run_id=row.run_id, round=row.round,
                                 reported_at=to_timestamp(row.reported_at), summary=dict_to_struct(row.summary))


def run_to_proto(db: Session, row: RunRow, with_rounds: bool = True) -> common_pb2.Run:
    """Run with its rounds and per-client results."""
    run = common_pb2.Run(
        id=row.id,
        task_id=row.task_id,
        state=common_pb2.RunState.ValueType(row.state),
        outcome=common_pb2.RunOutcome.ValueType(row.outcome),
        reason=row.reason,
        client_ids=row.client_ids,
        total_rounds=row.total_rounds,
        current_round=row.current_round,
        run_config=dict_to_struct(row.run_config),
        config_hash=row.config_hash,
        flower_run_id=row.flower_run_id,
        superlink_address=row.superlink_address,
        resumed_from_model_id=row.resumed_from_model_id,
        created_at=to_timestamp(row.created_at),
        started_at=to_timestamp(row.started_at),
        finished_at=to_timestamp(row.finished_at),
        initial_central_metrics=metricvalues.scalars(row.initial_central_metrics),
        completed_rounds=row.completed_rounds,
        model_note=row.model_note,
        api_style=common_pb2.ApiStyle.ValueType(row.api_style),
        app_decides=row.app_decides,
        selection=selection_to_proto(row.selection or {}),
    )
    if not with_rounds:
        return run
    results: dict[int, list[ClientResultRow]] = {}
    for result in db.query(ClientResultRow).filter(ClientResultRow.run_id == row.id).order_by(ClientResultRow.id):
        results.setdefault(result.round, []).append(result)
    for rnd in db.query(RoundRow).filter(RoundRow.run_id == row.id).order_by(RoundRow.number):
        round_ = common_pb2.Round(
            number=rnd.number, phase=rnd.phase, started_at=to_timestamp(rnd.started_at),
            finished_at=to_timestamp(rnd.finished_at), selected_client_ids=rnd.selected,
            responded_client_ids=rnd.responded, failed_client_ids=rnd.failed, model_version_id=rnd.model_version_id)
        metricvalues.fill(round_.train_metrics, round_.train_metric_lists, rnd.train_metrics)
        metricvalues.fill(round_.evaluate_metrics, round_.evaluate_metric_lists, rnd.evaluate_metrics)
        metricvalues.fill(round_.central_metrics, round_.central_metric_lists, rnd.central_metrics)
        for r in results.get(rnd.number, []):
            client_result = round_.client_results.add(client_id=r.client_id, node_id=int(r.node_id or 0),
                                                      phase=r.phase, duration_s=r.duration_s, error=r.error)
            metricvalues.fill(client_result.metrics, client_result.metric_lists, r.metrics)
        run.rounds.append(round_)
    return run


def model_to_proto(row: ModelRow, tags: list[str] | None = None) -> common_pb2.ModelVersion:
    """Model version with lineage."""
    version = common_pb2.ModelVersion(
        id=row.id, task_id=row.task_id, run_id=row.run_id, round=row.round, version=row.version,
        participant_client_ids=row.participants, config_hash=row.config_hash,
        sha256=row.sha256, size_bytes=row.size_bytes, format=row.format, parent_id=row.parent_id,
        created_at=to_timestamp(row.created_at), tags=tags or [])
    metricvalues.fill(version.metrics, version.metric_lists, row.metrics)
    return version
