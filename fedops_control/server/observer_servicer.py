"""ObserverService: the wrappers inside Flower's app processes report here, and store and fetch models."""

from __future__ import annotations

import asyncio

import grpc

from fedops_common import metricvalues
from fedops_common.observer import CHUNK_BYTES
from fedops_common.proto import agent_pb2, agent_pb2_grpc, common_pb2
from fedops_control.access.interceptor import AccessControl
from fedops_control.errors import NotFound, PermissionDenied
from fedops_control.registry.store import ModelStore
from fedops_control.run.manager import RunManager
from fedops_control.server.convert import model_to_proto
from fedops_control.server.errors import grpc_errors, grpc_stream_errors

MAX_MODEL_BYTES = 2 * 1024**3


class ObserverServicer(agent_pb2_grpc.ObserverServiceServicer):
    """Implements fedops.v1.ObserverService."""

    def __init__(self, runs: RunManager, models: ModelStore, access: AccessControl) -> None:
        self._runs = runs
        self._models = models
        self._access = access

    def _check_subject(self, context, subject: str, field: str) -> None:
        """An agent reports for itself only; a run's apps for their run only."""
        if not self._access.enabled:
            return
        identity = self._access.identity(context)
        if identity is None or identity.subject != subject:
            raise PermissionDenied(f"{field}: this credential may not report for {subject[:64]!r}")

    @grpc_errors
    async def ReportServerEvent(self, request, context):
        self._check_subject(context, request.run_id, "run_id")
        stop = await self._runs.on_server_event(request)
        return agent_pb2.ServerEventAck(stop_requested=stop)

    @grpc_errors
    async def ReportClientEvent(self, request, context):
        self._check_subject(context, request.client_id, "client_id")
        await self._runs.on_client_event(request)
        return agent_pb2.ClientEventAck()

    async def UploadModel(self, request_iterator, context):
        header = None
        parts: list[bytes] = []
        size = 0
        async for chunk in request_iterator:
            if header is None:
                header = chunk.version
            size += len(chunk.data)
            if size > MAX_MODEL_BYTES:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "data: model larger than 2 GiB")
            parts.append(chunk.data)
        if header is None or not header.run_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "version.run_id: required on the first chunk")
        try:
            self._check_subject(context, header.run_id, "version.run_id")
        except PermissionDenied as err:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
        try:
            row = await asyncio.to_thread(self._models.add, header.run_id, header.round, b"".join(parts),
                                          metricvalues.merged(header.metrics, header.metric_lists),
                                          header.format or "npz")
        except NotFound as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        await self._runs.on_model_stored(row.run_id, row.id, row.version, row.round)
        return model_to_proto(row)

    @grpc_stream_errors
    async def FetchModel(self, request, context):
        row = self._models.resolve(request.model_id)
        identity = self._access.identity(context)
        if self._access.enabled and (identity is None or self._runs.task_of(identity.subject) != row.task_id):
            raise PermissionDenied("model_id: a run may fetch only models of its own task")
        data = self._models.read(row)
        for start in range(0, max(len(data), 1), CHUNK_BYTES):
            yield common_pb2.ModelChunk(data=data[start:start + CHUNK_BYTES])
