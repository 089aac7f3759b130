"""One client of the control service's API (ControlService and AccessService) for every tool.

``fedopsctl`` and the dashboard call the service through :class:`ControlClient`, and edit a task
through :func:`task_update_request`, so a call, its errors and the task-update merge are written once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import json_format

from fedops_common.convert import dict_to_struct
from fedops_common.grpc_channel import control_channel
from fedops_common.proto import (
    access_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
)
from fedops_common.security import ChannelSecurity

BAD_INPUT = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class ControlError(Exception):
    """A call the service answered with an error: its status code and its message, verbatim."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @property
    def bad_input(self) -> bool:
        return self.code in BAD_INPUT

    @property
    def refused(self) -> bool:
        return self.code in REFUSED

    @classmethod
    def of(cls, err: grpc.RpcError) -> ControlError:
        return cls(err.code(), err.details() or "")  # grpc.Call's methods


class ControlClient:
    """Blocking client of one control service (address; TLS and token in ``security``, by default
    the environment's: FEDOPS_TOKEN, FEDOPS_TLS_*)."""

    def __init__(self, address: str, security: ChannelSecurity | None = None) -> None:
        self.address = address
        self.channel = control_channel(address, security)
        self.control = control_pb2_grpc.ControlServiceStub(self.channel)
        self.access = access_pb2_grpc.AccessServiceStub(self.channel)

    def call(self, method: str, request: Any, timeout: float = 30, service: str = "control") -> Any:
        """A unary call by method name; errors become :class:`ControlError`."""
        try:
            return getattr(getattr(self, service), method)(request, timeout=timeout)
        except grpc.RpcError as err:
            raise ControlError.of(err) from None

    def stream(self, method: str, request: Any, timeout: float | None = None) -> Iterator[Any]:
        """A server-streaming call by method name; errors become :class:`ControlError`."""
        try:
            yield from getattr(self.control, method)(request, timeout=timeout)
        except grpc.RpcError as err:
            raise ControlError.of(err) from None

    def get_task(self, task_id: str) -> common_pb2.Task:
        return self.call("GetTask", control_pb2.GetTaskRequest(task_id=task_id))

    def update_task(self, task_id: str, **changes: Any) -> common_pb2.Task:
        """Edit a task: see :func:`task_update_request` for ``changes``."""
        return self.call("UpdateTask", task_update_request(self.get_task(task_id), **changes))

    def close(self) -> None:
        self.channel.close()


def task_update_request(current: common_pb2.Task, *, title: str | None = None, description: str | None = None,
                        tags: list[str] | None = None, app: common_pb2.AppReference | None = None,
                        strategy: dict[str, Any] | None = None, run_config_keys: dict[str, str] | None = None,
                        hyperparameters: dict[str, Any] | None = None,
                        unset_hyperparameters: list[str] | None = None,
                        label_selection: common_pb2.LabelSelection | None = None,
                        clear_label_selection: bool = False) -> control_pb2.UpdateTaskRequest:
    """The UpdateTask request that changes only what is given. ``strategy`` (StrategySettings fields)
    and ``run_config_keys`` are merged into the task's; a new ``best_metric`` without a direction lets
    the service choose the direction; ``hyperparameters`` are merged, ``unset_hyperparameters`` removed;
    ``label_selection`` replaces the task's, ``clear_label_selection`` removes it (runs then take the
    task's selected clients)."""
    task = common_pb2.Task(id=current.id)
    paths = []
    if title is not None:
        task.title = title
        paths.append("title")
    if description is not None:
        task.description = description
        paths.append("description")
    if tags is not None:
        task.tags.extend(tags)
        paths.append("tags")
    if app is not None:
        task.app.CopyFrom(app)
        paths.append("app")
    if strategy or run_config_keys:
        task.strategy.CopyFrom(current.strategy)
        json_format.ParseDict(strategy or {}, task.strategy)
        if "best_metric" in (strategy or {}) and "best_metric_lower_is_better" not in (strategy or {}):
            task.strategy.ClearField("best_metric_lower_is_better")
        task.strategy.run_config_keys.update(run_config_keys or {})
        paths.append("strategy")
    if hyperparameters is not None or unset_hyperparameters:
        values = {**json_format.MessageToDict(current.hyperparameters), **(hyperparameters or {})}
        for key in unset_hyperparameters or []:
            values.pop(key, None)
        task.hyperparameters.CopyFrom(dict_to_struct(values))
        paths.append("hyperparameters")
    if label_selection is not None and clear_label_selection:
        raise ValueError("give a label selection or clear it, not both")
    if label_selection is not None:
        task.label_selection.CopyFrom(label_selection)
    if label_selection is not None or clear_label_selection:
        paths.append("label_selection")
    if not paths:
        raise ValueError("nothing to change: give at least one setting")
    return control_pb2.UpdateTaskRequest(task=task, update_paths=paths)


def label_selection(match_labels: dict[str, str], count: int) -> common_pb2.LabelSelection:
    """``count`` clients (0: every free one) with every label of ``match_labels``."""
    return common_pb2.LabelSelection(match_labels=match_labels, count=count)


def start_run_request(task_id: str, *, client_ids: list[str] | None = None,
                      match_labels: dict[str, str] | None = None, count: int = 0, resume_from: str = "",
                      overrides: dict[str, Any] | None = None) -> control_pb2.StartRunRequest:
    """StartRun by explicit ids, or by labels and count (``match_labels`` given, ``{}`` = any label), or,
    with neither, by the task's default (its label selection, else its selected clients)."""
    if client_ids and match_labels is not None:
        raise ValueError("select clients by id or by label, not both")
    request = control_pb2.StartRunRequest(task_id=task_id, resume_from_model_id=resume_from,
                                          hyperparameter_overrides=dict_to_struct(overrides or {}))
    if match_labels is not None:
        request.selection.labels.CopyFrom(label_selection(match_labels, count))
    elif client_ids:
        request.selection.ids.client_ids.extend(client_ids)
    return request
