"""The control API's client library, shared by ``fedopsctl`` and the dashboard."""

from fedops_client.control import (
    ControlClient,
    ControlError,
    label_selection,
    start_run_request,
    task_update_request,
)

__all__ = ["ControlClient", "ControlError", "label_selection", "start_run_request", "task_update_request"]
