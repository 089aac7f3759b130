"""The ClientApp FedOps runs in place of the user's: it loads theirs and observes it.

Each message is handed to the user's ClientApp unchanged; we time it and report the
reply's metrics (MetricRecords, and the metrics dict of older-style apps, scalars and
lists) or its error with our client id, which maps Flower node ids to clients. A ClientApp
that cannot even be loaded (a missing package) is reported the same way. What the app
prints lands in the run's logs.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.supercore.object_ref import load_app

from fedops_common import metricvalues
from fedops_common import runconfig as keys
from fedops_common.logging import bind_ids, get_logger
from fedops_common.observer import ObserverClient
from fedops_common.proto import agent_pb2
from fedops_common.telemetry.actor import app_process_telemetry
from fedops_flower.appoutput import capture_output


def _round_of(message: Message) -> int:
    """The server round (of this launch of the run: see ``fedops-round-offset``): Flower's strategies
    put ``server-round`` in the config; else a numeric group id."""
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

    def _observer_for(self, context: Context) -> ObserverClient:
        if self._observer is None:
            app_process_telemetry("fedops-clientapp")  # logs land in the agent's telemetry dir
            capture_output()  # for the life of this process: it runs the user's code only
            self._observer = ObserverClient.from_config(context.node_config)
        return self._observer

    def _load(self, context: Context) -> ClientApp:
        if self._inner is None:
            inner = load_app(str(context.run_config[keys.INNER_CLIENTAPP]), RuntimeError)
            if not isinstance(inner, ClientApp):
                raise TypeError(f"{context.run_config[keys.INNER_CLIENTAPP]} is not a flwr ClientApp")
            self._inner = inner
        return self._inner

    def __call__(self, message: Message, context: Context) -> Message:
        observer = self._observer_for(context)
        event = agent_pb2.ClientEvent(
            run_id=str(context.node_config.get(keys.NODE_RUN_ID, context.run_config.get(keys.RUN_ID, ""))),
            client_id=str(context.node_config.get(keys.NODE_CLIENT_ID, "")),
            node_id=context.node_id,
            round=_round_of(message) + int(context.run_config.get(keys.ROUND_OFFSET, 0)),
            phase=message.metadata.message_type,
        )
        bind_ids(run_id=event.run_id, task_id=str(context.node_config.get(keys.NODE_TASK_ID, "")),
                 client_id=event.client_id, node_id=str(event.node_id),
                 round=event.round, flower_run_id=str(context.run_id))
        log = get_logger(__name__)
        start = time.monotonic()
        try:
            reply = self._load(context)(message, context)
        except BaseException as err:
            # The root cause, the ClientApp's loading included (an ImportError is the usual one).
            cause = err.__cause__ if isinstance(err, RuntimeError) and err.__cause__ is not None else err
            event.duration_s = time.monotonic() - start
            event.error = f"{type(cause).__name__}: {cause}"
            log.error("ClientApp failed", phase=event.phase, error=event.error, duration_s=event.duration_s)
            observer.client_event(event)
            raise
        event.duration_s = time.monotonic() - start
        if reply.has_error():
            event.error = reply.error.reason or f"error code {reply.error.code}"
        else:
            event.metrics.CopyFrom(metricvalues.to_proto(metricvalues.from_records(reply.content)))
        log.info("message handled", phase=event.phase, duration_s=round(event.duration_s, 3),
                 error=event.error or None,
                 **{f"metric_{k}": v for k, v in metricvalues.from_proto(event.metrics).items()})
        observer.client_event(event)
        return reply


app = ObservedClientApp()
