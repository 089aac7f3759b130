"""The agent's side of warm app processes (``fedops_flower.warmapps``): whether a run gets them, where
its template keeps what it learned, and telling the control service when a run's SuperExec fell back
to Flower's own executor."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from fedops_agent.supernode import SuperNodeProcess
from fedops_common import runconfig as keys
from fedops_common.logging import get_logger
from fedops_common.proto import agent_pb2, common_pb2

log = get_logger(__name__)
# What fedops_flower.warmapps.executor logs when it cannot build a template (kept here as text: the
# agent does not import Flower's executor code).
FALLBACK_MARK = "fedops warm apps: falling back to Flower's subprocess executor"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def learned_file(state_dir: Path, node_config: Mapping[str, str]) -> Path | None:
    """Where the ClientApp templates of this run's task keep the library modules its tasks import
    (``FEDOPS_WARM_LEARNED``): one file per task on this agent, so the next run of the task starts
    with them imported. None when the run names no task (or an id unfit for a file name)."""
    return learned_path(state_dir, task_of(node_config))


def task_of(node_config: Mapping[str, str]) -> str:
    """The task a run's node config names ("" when none)."""
    return keys.config_text(node_config, keys.NODE_TASK_ID)


def learned_path(state_dir: Path, task_id: str) -> Path | None:
    """:func:`learned_file` of a task id (None for an id unfit for a file name)."""
    if not _SAFE_NAME.fullmatch(task_id):
        return None
    return state_dir / "warm-imports" / f"{task_id}.json"


async def watch_fallback(node: SuperNodeProcess, read_log: Callable[[], str],
                         status: Callable[[common_pb2.ClientState.ValueType, str, str], None],
                         notice: Callable[[agent_pb2.RunNotice], None], interval_s: float = 1.0) -> None:
    """While the SuperNode runs, look for the executor's fallback line in its log; report it once
    (a notice among the run's events, the client's state reason, and a warning in the agent's log
    with the run id)."""
    while node.process.poll() is None:
        text = read_log()
        at = text.find(FALLBACK_MARK)
        if at >= 0:
            line = text[at:].split("\n", 1)[0]
            log.warning("warm apps fell back to Flower's executor", run_id=node.run_id, detail=line)
            notice(agent_pb2.RunNotice(run_id=node.run_id, kind=agent_pb2.RunNotice.KIND_WARM_APPS_FALLBACK,
                                       detail=line))
            status(common_pb2.CLIENT_STATE_TRAINING, line, node.run_id)
            return
        await asyncio.sleep(interval_s)
