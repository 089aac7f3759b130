"""The control API's client library, shared by ``fedopsctl`` and the dashboard."""

from fedops_client.control import ControlClient, ControlError, task_update_request

__all__ = ["ControlClient", "ControlError", "task_update_request"]
