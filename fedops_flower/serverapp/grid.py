"""A Grid that observes the user's ServerApp: rounds, replies, failures, timeouts, quorum.

Every ServerApp, whatever its API style, sends its messages through the Grid, so the Grid is
where rounds, participation and client failures are seen for all of them. A step (one
``send_and_receive`` call, or a :meth:`ObservedGrid.phase` of concurrent single-message
calls, as Flower's legacy ``Server`` makes) is reported as phase started, replies as they
arrive, and phase finished; a step with fewer successful replies than ``min(quorum, sent)``
fails the run.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

from fedops_common import metricvalues
from fedops_common.proto import agent_pb2, common_pb2
from fedops_flower.serverapp.reporter import CooperativeStop, QuorumNotMet, Reporter
from fedops_flower.warmapps.gridwake import Waiter

POLL_INTERVAL_S = 0.1
# Before the first send, how long get_node_ids waits for the run's nodes to join. Flower's
# sample_nodes sleeps 1 s between its checks: waiting here instead, in 0.1 s steps, starts
# round 1 as soon as the last node joins.
JOIN_WAIT_S = 1.0
# Flower's SuperNode reports a ClientApp exception as "<class 'ModuleNotFoundError'>:<'No module ...'>".
_FLOWER_ERROR = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>$", re.DOTALL)


def content_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries (the model, mostly)."""
    if message.has_error():
        return 0
    return sum(len(array.data) for record in message.content.array_records.values() for array in record.values())


def error_text(message: Message) -> str:
    """A reply's error as ``Type: message`` (Flower's own format rewritten)."""
    reason = message.error.reason or f"error code {message.error.code}"
    match = _FLOWER_ERROR.match(reason.strip())
    return f"{match.group(1)}: {match.group(2)}" if match else reason


class _Step:
    """One phase: the nodes sent to, and who replied."""

    def __init__(self, round_number: int, phase: str, node_ids: list[int]) -> None:
        self.round = round_number
        self.phase = phase
        self.node_ids = node_ids
        self.replied: set[int] = set()
        self.ok = 0
        self.lock = threading.Lock()


class ObservedGrid(Grid):
    """Delegates to Flower's Grid; reports every send/receive and enforces timeout and quorum."""

    def __init__(self, inner: Grid, reporter: Reporter) -> None:
        self._inner = inner
        self._reporter = reporter
        self._state = reporter.state
        self._batch: _Step | None = None
        # Woken by the SuperLink when a reply arrives (warmapps/gridwake.py); else it polls as before.
        self._wake = Waiter.open()

    @property
    def run(self):
        return self._inner.run

    def set_run(self, run) -> None:
        self._inner.set_run(run)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
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

    def get_nodes(self):
        return self._inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._state.sent = True
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def _round_of(self, messages: list[Message], phase: str) -> int:
        """The strategy's round if a hook set it, else the messages' numeric group id, else
        count train phases. The initial parameter exchange (group id "0") is round 0."""
        state = self._state
        with state.lock:
            group = messages[0].metadata.group_id
            if not state.round_from_strategy:
                if group.isdigit():
                    state.current_round = int(group)
                elif phase == "train" and state.last_phase != "train":
                    state.current_round += 1
            state.last_phase = phase
            return state.current_round

    @contextlib.contextmanager
    def phase(self, round_number: int, phase: str, node_ids: list[int], timeout_s: float | None) -> Iterator[None]:
        """One step made of concurrent single-message ``send_and_receive`` calls (Flower's legacy
        ``Server`` sends each client's message from its own thread): reported as one phase."""
        step = _Step(round_number, phase, node_ids)
        self._start(step, self._timeout(timeout_s))
        self._batch = step
        try:
            yield
        finally:
            self._batch = None
        self._finish(step)

    def _timeout(self, timeout: float | None) -> float:
        cap = self._state.round_timeout_s
        return cap if timeout is None else min(timeout, cap)

    def _start(self, step: _Step, timeout: float) -> None:
        # A stop the strategy hooks did not act on at a round's end (an app that drives the Grid
        # itself): no new training round, but round 1 always trains (a stop during round 0 finishes it).
        if self._state.stop_requested and step.phase == "train" and step.round > 1:
            raise CooperativeStop(f"stopped by operator before round {step.round}")
        self._reporter.send(step.round, phase_started=agent_pb2.PhaseStarted(
            phase=step.phase, node_ids=step.node_ids, timeout_s=timeout))

    def _finish(self, step: _Step) -> None:
        timed_out = [node for node in step.node_ids if node not in step.replied]
        needed = min(self._state.quorum, len(step.node_ids))
        self._reporter.send(step.round, phase_finished=agent_pb2.PhaseFinished(
            phase=step.phase, timed_out_node_ids=timed_out, sent=len(step.node_ids), ok=step.ok, needed=needed))
        if step.ok < needed:
            failure = agent_pb2.QuorumFailure(phase=step.phase, sent=len(step.node_ids), ok=step.ok, needed=needed,
                                              timed_out=len(timed_out))
            raise QuorumNotMet(f"round {step.round} {step.phase}: {step.ok} of {len(step.node_ids)} replies "
                               f"succeeded, {needed} needed for the quorum ({len(timed_out)} timed out)", failure)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull replies as the SuperLink says they arrive (at least every 100 ms),
        reporting each reply as it arrives."""
        messages = list(messages)
        if not messages:
            return []
        phase = messages[0].metadata.message_type
        batch = self._batch
        step = batch if batch is not None else _Step(self._round_of(messages, phase), phase,
                                                     [m.metadata.dst_node_id for m in messages])
        timeout = self._timeout(timeout)
        if batch is None:
            self._start(step, timeout)
        node_by_msg: dict[str, int] = {}
        sent_bytes: dict[str, int] = {}
        msg_ids = list(self.push_messages(messages))
        for msg_id, message in zip(msg_ids, messages, strict=True):
            node_by_msg[msg_id] = message.metadata.dst_node_id
            sent_bytes[msg_id] = content_bytes(message)
        pending = set(msg_ids)
        replies: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            seen = self._wake.seen
            batch_replies = list(self._inner.pull_messages(pending))
            if not batch_replies:
                self._wake.wait(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())), seen)
                continue
            results = []
            for reply in batch_replies:
                msg_id = reply.metadata.reply_to_message_id
                pending.discard(msg_id)
                node_id = node_by_msg.get(msg_id, reply.metadata.src_node_id)
                result = common_pb2.ClientRoundResult(
                    node_id=node_id,
                    phase=phase,
                    bytes_sent=sent_bytes.get(msg_id, 0),
                    bytes_received=content_bytes(reply),
                )
                with step.lock:
                    step.replied.add(node_id)
                    if reply.has_error():
                        result.error = error_text(reply)
                    else:
                        step.ok += 1
                        metricvalues.fill(result.metrics, result.metric_lists, metricvalues.from_records(reply.content))
                results.append(result)
            replies.extend(batch_replies)
            self._reporter.send(step.round, replies=agent_pb2.PhaseReplies(results=results))
        if batch is None:
            self._finish(step)
        return replies
