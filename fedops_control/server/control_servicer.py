"""ControlService: the operator-facing API (tasks, clients, runs, models, diagnosis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from fedops_common.convert import dict_to_struct, struct_to_dict, to_timestamp, utcnow
from fedops_common.observer import CHUNK_BYTES
from fedops_common.proto import common_pb2, control_pb2, control_pb2_grpc
from fedops_control.access.interceptor import AccessControl
from fedops_control.agents.sessions import AgentSessions
from fedops_control.clients.labels import LabelSource, set_labels, validated, validated_keys
from fedops_control.clients.listing import count_groups, list_page, parse_page_token
from fedops_control.clients.selection import selection_from_request
from fedops_control.errors import FailedPrecondition, InvalidArgument, NotFound
from fedops_control.registry.store import ModelStore
from fedops_control.run.diagnosis import diagnose
from fedops_control.run.events import EventBus
from fedops_control.run.manager import RunManager
from fedops_control.server.convert import (
    client_to_proto,
    clients_to_proto,
    data_status_to_proto,
    model_to_proto,
    run_to_proto,
    task_to_proto,
)
from fedops_control.server.errors import grpc_errors, grpc_stream_errors
from fedops_control.state.models import (
    ClientRow,
    DataStatusRow,
    MembershipRow,
    RunRow,
    TaskRow,
)
from fedops_control.task.spec import task_from_proto
from fedops_control.task.strategy import StrategySpec

S = common_pb2
UPDATABLE = {"title", "description", "tags", "app", "strategy", "hyperparameters", "client_config", "label_selection"}


RUN_FINISHED_GRACE_S = 30.0
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000  # ListRuns and ListClients


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    """Implements fedops.v1.ControlService."""

    def __init__(self, sessions, runs: RunManager, agents: AgentSessions, models: ModelStore, bus: EventBus,
                 require_enrolment: bool = False, access: AccessControl | None = None) -> None:
        self._require_enrolment = require_enrolment  # with auth on, only enrolled clients can be selected
        self._access = access  # who calls: a stopped run says who stopped it
        self._sessions = sessions
        self._runs = runs
        self._agents = agents
        self._models = models
        self._bus = bus

    def _task(self, db, task_id: str) -> TaskRow:
        if not task_id:
            raise InvalidArgument("task_id", "required")
        row = db.get(TaskRow, task_id)
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return row

    # ---------------------------------------------------------------- tasks
    @grpc_errors
    async def CreateTask(self, request, context):
        spec = task_from_proto(request.task)
        with self._sessions.begin() as db:
            row = TaskRow(id=f"task-{uuid.uuid4().hex[:10]}", **spec)
            db.add(row)
        await self._runs.expect_app(spec["app"])
        with self._sessions() as db:
            return task_to_proto(db, db.get(TaskRow, row.id))

    @grpc_errors
    async def GetTask(self, request, context):
        with self._sessions() as db:
            return task_to_proto(db, self._task(db, request.task_id))

    @grpc_errors
    async def ListTasks(self, request, context):
        with self._sessions() as db:
            rows = db.query(TaskRow).order_by(TaskRow.created_at).all()
            return control_pb2.ListTasksResponse(
                tasks=[task_to_proto(db, r) for r in rows if not request.tag or request.tag in r.tags])

    @grpc_errors
    async def UpdateTask(self, request, context):
        paths = list(request.update_paths) or sorted(UPDATABLE)
        for path in paths:
            if path not in UPDATABLE:
                raise InvalidArgument("update_paths", f"cannot update {path!r}; one of {sorted(UPDATABLE)}")
        with self._sessions() as db:
            row = self._task(db, request.task.id)
            current, previous = task_to_proto(db, row), StrategySpec.from_dict(row.strategy)
        merged = common_pb2.Task()
        merged.CopyFrom(current)
        for path in paths:
            if path == "tags":
                del merged.tags[:]
                merged.tags.extend(request.task.tags)
            elif path in ("app", "strategy", "hyperparameters", "client_config"):
                getattr(merged, path).CopyFrom(getattr(request.task, path))
            elif path == "label_selection":  # unset in the request: the task goes back to its selected ids
                merged.ClearField("label_selection")
                if request.task.HasField("label_selection"):
                    merged.label_selection.CopyFrom(request.task.label_selection)
            else:
                setattr(merged, path, getattr(request.task, path))
        spec = task_from_proto(merged, previous)
        with self._sessions.begin() as db:
            row = self._task(db, request.task.id)
            for key, value in spec.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
        if "app" in paths:
            await self._runs.expect_app(spec["app"])
        with self._sessions() as db:
            return task_to_proto(db, db.get(TaskRow, request.task.id))

    @grpc_errors
    async def DeleteTask(self, request, context):
        with self._sessions.begin() as db:
            row = self._task(db, request.task_id)
            if db.query(RunRow).filter(RunRow.task_id == row.id).count():
                raise FailedPrecondition(f"task {row.id} has runs; their history is kept, so it cannot be deleted")
            db.query(MembershipRow).filter(MembershipRow.task_id == row.id).delete()
            db.delete(row)
        return control_pb2.DeleteTaskResponse(deleted=True)

    # ---------------------------------------------------------------- clients
    @grpc_errors
    async def ListClients(self, request, context):
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"between 1 and {MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE})")
        if request.page_token:
            parse_page_token(request.page_token)
        if request.state and request.state not in S.ClientState.values():
            raise InvalidArgument("state", f"unknown client state {request.state}")
        validated("labels", request.labels)
        return await asyncio.to_thread(self._list_clients, request)

    def _list_clients(self, request: control_pb2.ListClientsRequest) -> control_pb2.ListClientsResponse:
        """One page, newest first (keyset paging: stable while clients join), off the event loop."""
        with self._sessions() as db:
            if request.task_id:
                self._task(db, request.task_id)
            page, token, total = list_page(db, self._agents, request.task_id, request.labels, request.state,
                                           request.page_size or DEFAULT_PAGE_SIZE, request.page_token)
            return control_pb2.ListClientsResponse(clients=clients_to_proto(db, page, self._agents),
                                                   next_page_token=token, total_size=total)

    @grpc_errors
    async def GetClient(self, request, context):
        return await asyncio.to_thread(self._get_client, request.client_id)

    def _get_client(self, client_id: str) -> common_pb2.Client:
        with self._sessions() as db:
            row = db.get(ClientRow, client_id)
            if row is None:
                raise NotFound(f"client {client_id} not found")
            return client_to_proto(db, row, self._agents)

    @grpc_errors
    async def SetClientLabels(self, request, context):
        """An operator's labels: they win over the agent's config until that config changes."""
        if not request.client_id:
            raise InvalidArgument("client_id", "required")
        labels = validated("labels", request.labels)
        remove = validated_keys("remove_keys", list(request.remove_keys))
        if not labels and not remove:
            raise InvalidArgument("labels", "give labels to set or keys to remove")
        both = sorted(set(labels) & set(remove))
        if both:
            raise InvalidArgument("remove_keys", f"{both[0]!r} is both set and removed")
        return await asyncio.to_thread(self._set_client_labels, request.client_id, labels, remove)

    def _set_client_labels(self, client_id: str, labels: dict[str, str], remove: list[str]) -> common_pb2.Client:
        with self._sessions.begin() as db:
            if db.get(ClientRow, client_id) is None:
                raise NotFound(f"client {client_id} not found")
            set_labels(db, client_id, labels, LabelSource.OPERATOR, remove)
        return self._get_client(client_id)

    @grpc_errors
    async def CountClients(self, request, context):
        labels = validated("labels", request.labels)
        if request.group_by:
            validated_keys("group_by", [request.group_by])
        return await asyncio.to_thread(self._count_clients, request.task_id, labels, request.group_by)

    def _count_clients(self, task_id: str, labels: dict[str, str], group_by: str) -> control_pb2.CountClientsResponse:
        with self._sessions() as db:
            if task_id:
                self._task(db, task_id)
            return count_groups(db, self._agents, task_id, labels, group_by)

    @grpc_errors
    async def ListDataStatus(self, request, context):
        """Data status reports, newest first, per client and/or run."""
        if request.limit < 0 or request.limit > 1000:
            raise InvalidArgument("limit", "must be between 0 and 1000")
        limit = request.limit or 100
        with self._sessions() as db:
            if request.client_id and db.get(ClientRow, request.client_id) is None:
                raise NotFound(f"client {request.client_id} not found")
            if request.run_id and db.get(RunRow, request.run_id) is None:
                raise NotFound(f"run {request.run_id} not found")
            query = db.query(DataStatusRow)
            if request.client_id:
                query = query.filter(DataStatusRow.client_id == request.client_id)
            if request.run_id:
                query = query.filter(DataStatusRow.run_id == request.run_id)
            rows = query.order_by(DataStatusRow.id.desc()).limit(limit if not request.latest_only else 100000).all()
            if request.latest_only:
                seen: set[str] = set()
                rows = [r for r in rows if not (r.client_id in seen or seen.add(r.client_id))][:limit]
            return control_pb2.ListDataStatusResponse(reports=[data_status_to_proto(r) for r in rows])

    @grpc_errors
    async def SetTaskMembership(self, request, context):
        """Select which enrolled clients take part in the task's runs."""
        with self._sessions.begin() as db:
            task = self._task(db, request.task_id)
            members = {m.client_id: m for m in db.query(MembershipRow).filter(MembershipRow.task_id == task.id)}
            for cid in request.client_ids:
                if db.get(ClientRow, cid) is None:
                    raise InvalidArgument("client_ids", f"unknown client {cid!r}")
                if self._require_enrolment and not (cid in members and members[cid].enrolled):
                    raise InvalidArgument("client_ids", f"client {cid!r} is not enrolled in task {task.id}")
                if cid not in members:
                    members[cid] = MembershipRow(task_id=task.id, client_id=cid, enrolled=False)
                    db.add(members[cid])
            for cid, member in members.items():
                member.selected = cid in request.client_ids
        await self._runs.prepare_clients(request.task_id, list(request.client_ids))
        with self._sessions() as db:
            return task_to_proto(db, db.get(TaskRow, request.task_id))

    # ---------------------------------------------------------------- runs
    @grpc_errors
    async def StartRun(self, request, context):
        if not request.task_id:
            raise InvalidArgument("task_id", "required")
        selection = selection_from_request(request.client_ids,
                                           request.selection if request.HasField("selection") else None)
        run = await self._runs.start_run(request.task_id, selection, request.resume_from_model_id,
                                         struct_to_dict(request.hyperparameter_overrides))
        with self._sessions() as db:
            return run_to_proto(db, db.get(RunRow, run.id))

    @grpc_errors
    async def StopRun(self, request, context):
        identity = self._access.identity(context) if self._access is not None else None
        run = await self._runs.stop_run(request.run_id, request.mode == control_pb2.STOP_MODE_HARD,
                                        by=identity.name if identity else "an operator")
        with self._sessions() as db:
            return run_to_proto(db, db.get(RunRow, run.id))

    @grpc_errors
    async def GetRun(self, request, context):
        return await asyncio.to_thread(self._get_run, request.run_id)

    def _get_run(self, run_id: str) -> common_pb2.Run:
        self._runs.get_run_row(run_id)
        with self._sessions() as db:
            return run_to_proto(db, db.get(RunRow, run_id))

    @grpc_errors
    async def ListRuns(self, request, context):
        """Newest first, one page at a time: the page token is the offset of the next page."""
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE})")
        if request.page_token and not (request.page_token.isascii() and request.page_token.isdigit()
                                       and len(request.page_token) <= 9):
            raise InvalidArgument("page_token", f"not a token this service gave ({request.page_token!r})")
        offset = int(request.page_token or 0)
        with self._sessions() as db:
            query = db.query(RunRow)
            if request.task_id:
                query = query.filter(RunRow.task_id == request.task_id)
            rows = query.order_by(RunRow.created_at.desc(), RunRow.id.desc()).offset(offset).limit(size + 1).all()
            return control_pb2.ListRunsResponse(
                runs=[run_to_proto(db, r, with_rounds=False) for r in rows[:size]],
                next_page_token=str(offset + size) if len(rows) > size else "")

    @grpc_stream_errors
    async def WatchRun(self, request, context) -> AsyncIterator[common_pb2.RunEvent]:
        self._runs.get_run_row(request.run_id)
        last = request.after_seq
        finished_since = None
        while True:
            events = self._bus.since(request.run_id, last)
            for event in events:
                last = event.seq
                yield common_pb2.RunEvent(seq=event.seq, run_id=event.run_id, time=to_timestamp(event.time),
                                          kind=event.kind, round=event.round, client_id=event.client_id,
                                          message=event.message, data=dict_to_struct(event.data))
                if event.kind == "run_finished":
                    return
            if not events and self._runs.get_run_row(request.run_id).state == S.RUN_STATE_FINISHED:
                # The state flips before the processes are stopped and `run_finished` is published:
                # wait for that last event, but not forever (runs of a crashed service may lack it).
                finished_since = finished_since or asyncio.get_running_loop().time()
                if asyncio.get_running_loop().time() - finished_since > RUN_FINISHED_GRACE_S:
                    return
            await self._bus.wait(1.0)

    @grpc_errors
    async def DiagnoseRun(self, request, context):
        return await asyncio.to_thread(diagnose, self._sessions, self._agents, request.run_id)

    # ---------------------------------------------------------------- models
    def _strategy(self, task_id: str) -> StrategySpec:
        with self._sessions() as db:
            task = db.get(TaskRow, task_id)
            return StrategySpec.from_dict(task.strategy if task else None)

    @grpc_errors
    async def ListModels(self, request, context):
        rows = self._models.list(request.task_id, request.run_id)
        return control_pb2.ListModelsResponse(
            models=[model_to_proto(r, self._models.tags_for(r, self._strategy(r.task_id))) for r in rows])

    def _resolve(self, request) -> object:
        if not request.model_id:
            raise InvalidArgument("model_id", "required (a version id, 'latest' or 'best')")
        return self._models.resolve(request.model_id, request.task_id, self._strategy(request.task_id))

    @grpc_errors
    async def GetModel(self, request, context):
        row = self._resolve(request)
        return model_to_proto(row, self._models.tags_for(row, self._strategy(row.task_id)))

    @grpc_stream_errors
    async def DownloadModel(self, request, context):
        row = self._resolve(request)
        data = self._models.read(row)
        yield common_pb2.ModelChunk(version=model_to_proto(row), data=data[:CHUNK_BYTES])
        for start in range(CHUNK_BYTES, len(data), CHUNK_BYTES):
            yield common_pb2.ModelChunk(data=data[start:start + CHUNK_BYTES])

