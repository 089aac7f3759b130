"""A Grid that observes the user's ServerApp: rounds, replies, failures, timeouts, quorum."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedops_common.observer import ObserverClient, metric_values
from fedops_common.proto import agent_pb2, common_pb2

POLL_INTERVAL_S = 0.1
# Before the first send, how long get_node_ids waits for the run's nodes to join. Flower's
# sample_nodes sleeps 1 s between its checks: waiting here instead, in 0.1 s steps, starts
# round 1 as soon as the last node joins.
JOIN_WAIT_S = 1.0


def content_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries (the model, mostly)."""
    if message.has_error():
        return 0
    return sum(len(array.data) for record in message.content.array_records.values() for array in record.values())


class QuorumNotMet(RuntimeError):
    """Fewer successful replies than the task's quorum."""


class CooperativeStop(Exception):
    """The operator asked to stop after the current round."""


class RunState:
    """What the ServerApp-side instrumentation knows about the run so far."""

    def __init__(self, run_id: str, round_timeout_s: float, quorum: int, node_count: int = 0) -> None:
        self.run_id = run_id
        self.round_timeout_s = round_timeout_s
        self.quorum = quorum
        self.node_count = node_count  # the run's selected clients (0: unknown)
        self.sent = False             # whether any message was pushed yet
        self.current_round = 0
        self.last_phase = ""
        self.round_from_strategy = False  # set when Strategy.start tells us the round
        self.stop_requested = False


class ObservedGrid(Grid):
    """Delegates to Flower's Grid; reports every send/receive and enforces timeout and quorum."""

    def __init__(self, inner: Grid, observer: ObserverClient, state: RunState) -> None:
        self._inner = inner
        self._observer = observer
        self._state = state

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self._inner.run

    def set_run(self, run) -> None:  # type: ignore[no-untyped-def]
        self._inner.set_run(run)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Connected nodes. Before the first send, waits up to ``JOIN_WAIT_S`` for all the run's
        nodes (a caller that finds too few sleeps longer than that before asking again)."""
        nodes = list(self._inner.get_node_ids())
        deadline = time.monotonic() + JOIN_WAIT_S
        while not self._state.sent and len(nodes) < self._state.node_count and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
            nodes = list(self._inner.get_node_ids())
        return nodes

    def get_nodes(self):  # type: ignore[no-untyped-def]
        return self._inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._state.sent = True
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def _round_of(self, messages: list[Message], phase: str) -> int:
        """The strategy's round if known, else the group id, else count train phases."""
        group = messages[0].metadata.group_id if messages else ""
        if self._state.round_from_strategy:
            pass
        elif group.isdigit():
            self._state.current_round = int(group)
        elif phase == "train" and self._state.last_phase != "train":
            self._state.current_round += 1
        self._state.last_phase = phase
        return max(self._state.current_round, 1)

    def _report(self, kind: str, **fields) -> agent_pb2.ServerEventAck:  # type: ignore[no-untyped-def]
        ack = self._observer.server_event(agent_pb2.ServerEvent(run_id=self._state.run_id, kind=kind, **fields))
        self._state.stop_requested = self._state.stop_requested or ack.stop_requested
        return ack

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then poll replies every 100 ms, reporting each reply as it arrives."""
        messages = list(messages)
        if not messages:
            return []
        phase = messages[0].metadata.message_type
        server_round = self._round_of(messages, phase)
        if self._state.stop_requested and phase == "train":
            raise CooperativeStop(f"stopped by operator before round {server_round}")
        cap = self._state.round_timeout_s
        timeout = cap if timeout is None else min(timeout, cap)
        node_by_msg: dict[str, int] = {}
        sent_bytes: dict[str, int] = {}
        msg_ids = list(self.push_messages(messages))
        for msg_id, message in zip(msg_ids, messages):
            node_by_msg[msg_id] = message.metadata.dst_node_id
            sent_bytes[msg_id] = content_bytes(message)
        self._report("phase_started", round=server_round, phase=phase,
                     node_ids=list(node_by_msg.values()), timeout_s=timeout)
        pending = set(msg_ids)
        replies: list[Message] = []
        ok = 0
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            batch = list(self._inner.pull_messages(pending))
            if batch:
                results = []
                for reply in batch:
                    pending.discard(reply.metadata.reply_to_message_id)
                    node_id = node_by_msg.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                    result = common_pb2.ClientRoundResult(
                        node_id=node_id, phase=phase, bytes_sent=sent_bytes.get(reply.metadata.reply_to_message_id, 0),
                        bytes_received=content_bytes(reply))
                    if reply.has_error():
                        result.error = reply.error.reason or f"error {reply.error.code}"
                    else:
                        ok += 1
                        result.metrics.update(metric_values(reply.content))
                    results.append(result)
                replies.extend(batch)
                self._report("replies", round=server_round, phase=phase, results=results)
            else:
                time.sleep(POLL_INTERVAL_S)
        timed_out = [node_by_msg[m] for m in pending]
        self._report("phase_finished", round=server_round, phase=phase, node_ids=timed_out,
                     message=f"{ok}/{len(messages)} replies ok, {len(timed_out)} timed out")
        if ok < min(self._state.quorum, len(messages)):
            raise QuorumNotMet(f"round {server_round} {phase}: {ok} successful replies, "
                               f"quorum is {self._state.quorum} ({len(timed_out)} timed out)")
        return replies
