"""Preflight of a run: ask every selected agent whether it can run the app before starting it.

A client missing a dependency or its data would otherwise fail only once its SuperNode runs the
ClientApp, mid-round; preflight makes StartRun fail at once, naming the client and what it lacks.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
import uuid
from pathlib import Path

from fedops_common.proto import agent_pb2
from fedops_control.agents.sessions import AgentSessions
from fedops_control.errors import InvalidArgument

MAX_PROBLEMS = 20           # per client: an agent's answer is not trusted to be small
MAX_PROBLEM_CHARS = 300
CLIENTS_SHOWN = 2           # clients named in full in the summary; the others are counted
NOT_CONNECTED = "no session with the control service (offline)"
# Problems of a requirement (fedops_agent/preflight.py), which read after "lacks".
REQUIREMENT_PROBLEM = re.compile(r" \((not installed|installed [^)]*)\)$")


def no_answer(timeout_s: float) -> str:
    """The problem of a client that did not answer in time."""
    return f"no preflight answer within {timeout_s:g} s (agent too old or busy)"


class Preflight:
    """Pending preflight checks, each awaiting one answer per client."""

    def __init__(self) -> None:
        # (preflight_id, client_id) -> that client's problems. Keyed by client too, so an agent
        # can answer only for itself.
        self._pending: dict[tuple[str, str], asyncio.Future[list[str]]] = {}

    async def run(self, agents: AgentSessions, client_ids: list[str], requirements: list[str], run_id: str,
                  check_data_path: bool, timeout_s: float = 10.0) -> dict[str, list[str]]:
        """Send the check to each client and wait for all answers; problems per client (empty: ready)."""
        preflight_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        futures = {cid: loop.create_future() for cid in client_ids}
        for cid, future in futures.items():
            self._pending[(preflight_id, cid)] = future
        command = agent_pb2.AgentCommand(preflight=agent_pb2.Preflight(
            preflight_id=preflight_id, run_id=run_id, requirements=requirements, check_data_path=check_data_path))
        try:
            for cid, future in futures.items():
                if not agents.send(cid, command):
                    future.set_result([NOT_CONNECTED])
            if futures:
                await asyncio.wait(futures.values(), timeout=timeout_s)
            return {cid: future.result() if future.done() else [no_answer(timeout_s)]
                    for cid, future in futures.items()}
        finally:
            for cid in client_ids:
                self._pending.pop((preflight_id, cid), None)

    def on_result(self, client_id: str, result: agent_pb2.PreflightResult) -> None:
        """An agent's answer; answers nobody waits for (late, unknown, repeated) are dropped."""
        future = self._pending.get((result.preflight_id, client_id))
        if future is not None and not future.done():
            future.set_result([problem[:MAX_PROBLEM_CHARS] for problem in result.problems[:MAX_PROBLEMS]])


def _client_summary(client_id: str, problems: list[str]) -> str:
    missing = [p for p in problems if REQUIREMENT_PROBLEM.search(p)]
    others = [p for p in problems if not REQUIREMENT_PROBLEM.search(p)]
    if not missing:
        return f"{client_id}: {', '.join(others)}"
    return f"{client_id} lacks {', '.join(missing)}" + (f" and {', '.join(others)}" if others else "")


def summary(problems: dict[str, list[str]]) -> str:
    """One line for StartRun's error: the first clients with problems in full, the rest counted
    ("" when no client has a problem)."""
    failing = [(cid, found) for cid, found in problems.items() if found]
    text = "; ".join(_client_summary(cid, found) for cid, found in failing[:CLIENTS_SHOWN])
    more = len(failing) - CLIENTS_SHOWN
    if more > 0:
        text += f" (and {more} more client{'s' if more > 1 else ''})"
    return text


def app_requirements(app_dir: Path) -> list[str]:
    """The app's declared dependencies (`[project] dependencies` of its pyproject.toml), flwr included:
    the agent must have the Flower version the app was written for too."""
    pyproject = app_dir / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument("app", f"no pyproject.toml in {app_dir}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise InvalidArgument("app", f"cannot read {pyproject}: {err}") from None
    project = data.get("project", {})
    dependencies = project.get("dependencies", []) if isinstance(project, dict) else []
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise InvalidArgument("app", f"{pyproject}: [project] dependencies must be a list of strings")
    return list(dependencies)
