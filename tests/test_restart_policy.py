"""The agent's restart policy for a failed SuperNode: exponential backoff, capped."""

from __future__ import annotations

import pytest

from fedops_agent.daemon import restart_delay
from fedops_common.proto import agent_pb2


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    policy = agent_pb2.RetryPolicy(max_restarts=10, backoff_initial_s=1.0, backoff_max_s=30.0)
    assert [restart_delay(policy, n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_an_unset_cap_is_30_seconds() -> None:
    policy = agent_pb2.RetryPolicy(max_restarts=3, backoff_initial_s=20.0)
    assert restart_delay(policy, 0) == 20.0 and restart_delay(policy, 1) == 30.0


@pytest.mark.parametrize("initial", [0.5, 3.0])
def test_the_task_initial_backoff_is_the_first_delay(initial: float) -> None:
    assert restart_delay(agent_pb2.RetryPolicy(backoff_initial_s=initial, backoff_max_s=60.0), 0) == initial
