"""The observing Grid's wait for the run's nodes before round 1 (a fake inner Grid; the real one is
exercised by every end-to-end run)."""

from __future__ import annotations

import time

from fedops_flower.serverapp.grid import JOIN_WAIT_S, ObservedGrid
from fedops_flower.serverapp.reporter import Reporter, RunState


class JoiningNodes:
    """An inner Grid whose nodes join at given seconds after creation."""

    def __init__(self, join_after_s: list[float]) -> None:
        self.start = time.monotonic()
        self.join_after_s = join_after_s
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        elapsed = time.monotonic() - self.start
        return [100 + i for i, after in enumerate(self.join_after_s) if after <= elapsed]


def grid(join_after_s: list[float], node_count: int) -> tuple[ObservedGrid, JoiningNodes, RunState]:
    inner = JoiningNodes(join_after_s)
    state = RunState("run-1", round_timeout_s=60, quorum=2, node_count=node_count)
    return ObservedGrid(inner, Reporter(observer=None, state=state)), inner, state


def test_first_call_returns_once_the_last_node_joins() -> None:
    observed, inner, _ = grid([0.0, 0.0, 0.3], node_count=3)
    assert sorted(observed.get_node_ids()) == [100, 101, 102]
    assert inner.calls > 1  # it checked again instead of returning the two it first saw


def test_wait_is_bounded_when_a_node_never_joins() -> None:
    observed, _, _ = grid([0.0, 0.0, 3600.0], node_count=3)
    started = time.monotonic()
    assert sorted(observed.get_node_ids()) == [100, 101]
    assert JOIN_WAIT_S * 0.9 <= time.monotonic() - started < JOIN_WAIT_S + 2


def test_no_wait_after_the_first_send_or_without_a_node_count() -> None:
    observed, inner, state = grid([0.0, 3600.0], node_count=2)
    state.sent = True  # rounds after the first: a missing node is the strategy's business
    assert list(observed.get_node_ids()) == [100] and inner.calls == 1
    observed, inner, _ = grid([0.0, 3600.0], node_count=0)
    assert list(observed.get_node_ids()) == [100] and inner.calls == 1
