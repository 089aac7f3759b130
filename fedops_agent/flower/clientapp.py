"""The ClientApp FedOps runs in place of the user's: it loads theirs and observes it.

Each message is handed to the user's ClientApp unchanged; we time it and report the
reply's metrics (or its error) with our client id, which maps Flower node ids to clients.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.supercore.object_ref import load_app

from fedops_common.logging import bind_ids, get_logger
from fedops_common.observer import ObserverClient, metric_values
from fedops_common.proto import agent_pb2
from fedops_common.telemetry.actor import app_process_telemetry

KEY_INNER = "fedops-clientapp"
NODE_KEY_CLIENT_ID = "fedops-client-id"
NODE_KEY_RUN_ID = "fedops-run-id"
NODE_KEY_TASK_ID = "fedops-task-id"


def _round_of(message: Message) -> int:
    """The server round: Flower's strategies put ``server-round`` in the config; else a numeric group id."""
    if not message.has_error():
        for record in message.content.config_records.values():
            value = record.get("server-round")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    group = message.metadata.group_id
    return int(group) if group.isdigit() else 0


class ObservedClientApp(ClientApp):
    """A ClientApp that delegates every message to the user's ClientApp."""

    def __init__(self) -> None:
        super().__init__()
        self._inner: ClientApp | None = None
        self._observer: ObserverClient | None = None

    def _load(self, context: Context) -> tuple[ClientApp, ObserverClient]:
        if self._inner is None:
            inner = load_app(str(context.run_config[KEY_INNER]), RuntimeError)
            if not isinstance(inner, ClientApp):
                raise TypeError(f"{context.run_config[KEY_INNER]} is not a flwr ClientApp")
            self._inner = inner
            self._observer = ObserverClient.from_config(context.node_config)
            app_process_telemetry("fedops-clientapp")  # logs land in the agent's telemetry dir
        assert self._observer is not None
        return self._inner, self._observer

    def __call__(self, message: Message, context: Context) -> Message:
        inner, observer = self._load(context)
        event = agent_pb2.ClientEvent(
            run_id=str(context.node_config.get(NODE_KEY_RUN_ID, context.run_config.get("fedops-run-id", ""))),
            client_id=str(context.node_config.get(NODE_KEY_CLIENT_ID, "")),
            node_id=context.node_id,
            round=_round_of(message),
            phase=message.metadata.message_type,
        )
        bind_ids(run_id=event.run_id, task_id=str(context.node_config.get(NODE_KEY_TASK_ID, "")),
                 client_id=event.client_id, node_id=str(event.node_id),
                 round=event.round or None, flower_run_id=str(context.run_id))
        log = get_logger(__name__)
        start = time.monotonic()
        try:
            reply = inner(message, context)
        except Exception as err:
            event.duration_s = time.monotonic() - start
            event.error = f"{type(err).__name__}: {err}"
            log.error("ClientApp failed", phase=event.phase, error=event.error, duration_s=event.duration_s)
            observer.client_event(event)
            raise
        event.duration_s = time.monotonic() - start
        if reply.has_error():
            event.error = reply.error.reason
        else:
            event.metrics.update(metric_values(reply.content))
        log.info("message handled", phase=event.phase, duration_s=round(event.duration_s, 3),
                 error=event.error or None, **{f"metric_{k}": v for k, v in event.metrics.items()})
        observer.client_event(event)
        return reply


app = ObservedClientApp()
