"""Everything the dashboard reads or changes, behind small functions: the control service (gRPC),
Elasticsearch (logs, resource samples) and Prometheus. Settings come from the environment.

Each call opens what it needs and returns plain dicts, so pages stay declarative and the
dashboard keeps no state between reruns.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from fedops_client import ControlClient, ControlError, start_run_request
from fedops_common.convert import dict_to_struct
from fedops_common.proto import access_pb2, common_pb2, control_pb2
from fedops_common.security import ENV_TOKEN, ChannelSecurity
from fedops_common.telemetry.queries import QueryError as BackendError
from fedops_common.telemetry.queries import (
    prometheus_query,
    resource_timeline,
    search_logs,
)

ENV_CONTROL = "FEDOPS_CONTROL"
ENV_ELASTICSEARCH = "FEDOPS_ELASTICSEARCH_URL"
ENV_PROMETHEUS = "FEDOPS_PROMETHEUS_URL"


@dataclass(frozen=True)
class Settings:
    """Where the backends are."""

    control: str = "127.0.0.1:50051"
    elasticsearch_url: str = ""
    prometheus_url: str = ""
    token: str = ""  # the default identity of a session (see fedops_dash.auth); "" = everyone signs in

    @classmethod
    def from_env(cls) -> Settings:
        return cls(control=os.environ.get(ENV_CONTROL, cls.control),
                   elasticsearch_url=os.environ.get(ENV_ELASTICSEARCH, ""),
                   prometheus_url=os.environ.get(ENV_PROMETHEUS, ""),
                   token=os.environ.get(ENV_TOKEN, ""))


# Telemetry reads are shared with fedopsctl: one error type for every backend the dashboard uses.
__all__ = ["BackendError", "Control", "Settings", "prometheus_query", "resource_timeline", "search_logs"]


def to_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Control:
    """The control service's ControlService, through the client library fedopsctl uses too.

    ``token`` is the signed-in operator's own: the service enforces that token's role and its
    audit log names its holder (TLS files still come from the environment)."""

    def __init__(self, address: str, token: str = "") -> None:
        self.address = address
        self._client = ControlClient(address, dataclasses.replace(ChannelSecurity.from_env(), token=token))

    def whoami(self) -> dict[str, Any]:
        """The token's holder and role, e.g. ``{"name": "alice", "role": "ROLE_OPERATOR"}``."""
        return to_dict(self._call("WhoAmI", access_pb2.WhoAmIRequest(), service="access"))

    def _call(self, method: str, request: Any, timeout: float = 15, service: str = "control") -> Any:
        try:
            return self._client.call(method, request, timeout, service)
        except ControlError as err:
            raise BackendError(str(err)) from None

    def tasks(self) -> list[dict[str, Any]]:
        return [to_dict(t) for t in self._call("ListTasks", control_pb2.ListTasksRequest()).tasks]

    def task(self, task_id: str) -> dict[str, Any]:
        return to_dict(self._call("GetTask", control_pb2.GetTaskRequest(task_id=task_id)))

    def create_task(self, title: str, app: dict[str, Any], strategy: dict[str, Any], hyperparameters: dict[str, Any],
                    description: str = "", tags: list[str] | None = None) -> dict[str, Any]:
        task = common_pb2.Task(title=title, description=description, tags=tags or [],
                               hyperparameters=dict_to_struct(hyperparameters))
        json_format.ParseDict(app, task.app)
        json_format.ParseDict(strategy, task.strategy)
        return to_dict(self._call("CreateTask", control_pb2.CreateTaskRequest(task=task)))

    def update_task(self, task_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """``changes``: title, description, tags, strategy (merged into the current), hyperparameters,
        as :func:`fedops_client.task_update_request` takes them."""
        try:
            return to_dict(self._client.update_task(task_id, **changes))
        except ControlError as err:
            raise BackendError(str(err)) from None

    def select_clients(self, task_id: str, client_ids: list[str]) -> dict[str, Any]:
        return to_dict(self._call("SetTaskMembership",
                                  control_pb2.SetTaskMembershipRequest(task_id=task_id, client_ids=client_ids)))

    def clients(self, task_id: str = "") -> list[dict[str, Any]]:
        """Every client (all pages), newest first."""
        found, token = [], ""
        while True:
            page = self.client_page(task_id=task_id, page_size=1000, page_token=token)
            found += page["clients"]
            token = page.get("next_page_token", "")
            if not token:
                return found

    def client_page(self, task_id: str = "", state: int = 0, page_size: int = 0, page_token: str = "",
                    labels: dict[str, str] | None = None) -> dict[str, Any]:
        """One page of clients, newest first (``clients``, ``next_page_token``, ``total_size``); ``labels``:
        only clients with every one of them."""
        request = control_pb2.ListClientsRequest(task_id=task_id, state=common_pb2.ClientState.ValueType(state),
                                                 page_size=page_size, page_token=page_token, labels=labels or {})
        page = to_dict(self._call("ListClients", request))
        page.setdefault("clients", [])
        return page

    def client_groups(self, group_by: str, labels: dict[str, str] | None = None,
                      task_id: str = "") -> dict[str, Any]:
        """Clients by state per value of the ``group_by`` label (``groups``, ``total``, ``groups_left_out``)."""
        request = control_pb2.CountClientsRequest(task_id=task_id, labels=labels or {}, group_by=group_by)
        counted = to_dict(self._call("CountClients", request))
        counted.setdefault("groups", [])
        return counted

    def set_client_labels(self, client_id: str, labels: dict[str, str], remove_keys: list[str]) -> dict[str, Any]:
        """Set (overwrite) ``labels`` and remove ``remove_keys`` of one client; the client as it is now."""
        request = control_pb2.SetClientLabelsRequest(client_id=client_id, labels=labels, remove_keys=remove_keys)
        return to_dict(self._call("SetClientLabels", request))

    def client(self, client_id: str) -> dict[str, Any]:
        return to_dict(self._call("GetClient", control_pb2.GetClientRequest(client_id=client_id)))

    def data_status(self, client_id: str = "", run_id: str = "", latest_only: bool = False) -> list[dict[str, Any]]:
        request = control_pb2.ListDataStatusRequest(client_id=client_id, run_id=run_id, latest_only=latest_only)
        return [to_dict(r) for r in self._call("ListDataStatus", request).reports]

    def runs(self, task_id: str = "", most: int = 1000) -> list[dict[str, Any]]:
        """Newest first, up to ``most`` runs (the service's pages, read one after another; the pages
        show them 20 at a time)."""
        runs: list[dict[str, Any]] = []
        token = ""
        while len(runs) < most:
            page = self._call("ListRuns", control_pb2.ListRunsRequest(task_id=task_id, page_size=100, page_token=token))
            runs += [to_dict(r) for r in page.runs]
            token = page.next_page_token
            if not token:
                break
        return runs[:most]

    def run(self, run_id: str) -> dict[str, Any]:
        return to_dict(self._call("GetRun", control_pb2.GetRunRequest(run_id=run_id)))

    def start_run(self, task_id: str, resume_from: str = "", match_labels: dict[str, str] | None = None,
                  count: int = 0) -> dict[str, Any]:
        """Start a run on the task's clients, or (``match_labels`` given) on ``count`` clients with those labels."""
        request = start_run_request(task_id, match_labels=match_labels, count=count, resume_from=resume_from)
        return to_dict(self._call("StartRun", request, timeout=60))

    def stop_run(self, run_id: str, hard: bool) -> dict[str, Any]:
        mode = control_pb2.STOP_MODE_HARD if hard else control_pb2.STOP_MODE_COOPERATIVE
        return to_dict(self._call("StopRun", control_pb2.StopRunRequest(run_id=run_id, mode=mode), timeout=60))

    def diagnose(self, run_id: str) -> dict[str, Any]:
        return to_dict(self._call("DiagnoseRun", control_pb2.DiagnoseRunRequest(run_id=run_id)))

    def events(self, run_id: str, wait_s: float = 2.0) -> list[dict[str, Any]]:
        """The run's events so far. WatchRun replays them, then streams; a finished run's stream ends,
        an active run's is cut after ``wait_s`` and what arrived is returned."""
        events: list[dict[str, Any]] = []
        try:
            for event in self._client.stream("WatchRun", control_pb2.WatchRunRequest(run_id=run_id), timeout=wait_s):
                events.append(to_dict(event))
        except ControlError as err:
            if err.code.name != "DEADLINE_EXCEEDED":
                raise BackendError(str(err)) from None
        return events

    def models(self, task_id: str = "", run_id: str = "") -> list[dict[str, Any]]:
        return [to_dict(m) for m in self._call("ListModels", control_pb2.ListModelsRequest(task_id=task_id,
                                                                                          run_id=run_id)).models]

    def model(self, model_id: str) -> dict[str, Any]:
        return to_dict(self._call("GetModel", control_pb2.GetModelRequest(model_id=model_id)))

    def download_model(self, model_id: str) -> bytes:
        try:
            return b"".join(c.data for c in self._client.stream(
                "DownloadModel", control_pb2.GetModelRequest(model_id=model_id), timeout=120))
        except ControlError as err:
            raise BackendError(str(err)) from None
