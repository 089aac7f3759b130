"""A pod's Kubernetes status in plain words: what FedOps shows in run events, `run diagnose` and
the dashboard, and whether waiting longer can help.

Works on the pod as the API serves it (a camelCase dict), so it is tested with the states kwok
drives on a real API server and with hand-written ones alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Container waiting reasons that do not heal by waiting (the spec must change).
HOPELESS_WAITING = {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
                    "CreateContainerError", "RunContainerError"}
PULL_WAITING = {"ErrImagePull", "ImagePullBackOff"}


@dataclass(frozen=True)
class PodState:
    """One reading of a pod: ``ready`` (serving), ``final`` (it will not serve: fail the run now),
    and ``words`` for people ('' when there is nothing to say)."""

    ready: bool
    final: bool
    words: str


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in status.get("conditions") or []}


def read_pod(pod: dict[str, Any] | None) -> PodState:
    """Classify a pod: serving, still coming (with why), or failed (with why)."""
    if pod is None:
        return PodState(False, True, "the SuperLink pod is gone (deleted, or its namespace was)")
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    if status.get("reason") == "Evicted":
        return PodState(False, True, f"the SuperLink pod was evicted by its node: {status.get('message', '')}".strip())
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return PodState(False, True, "the SuperLink pod is being deleted")
    for container in status.get("containerStatuses") or []:
        name = container.get("name", "?")
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
        reason, message = waiting.get("reason", ""), waiting.get("message", "")
        if reason == "CrashLoopBackOff":
            last = ((container.get("lastState") or {}).get("terminated") or {})
            return PodState(False, True, f"container {name} is crash-looping (restarted "
                                         f"{container.get('restartCount', 0)} times; last exit code "
                                         f"{last.get('exitCode', '?')}: {last.get('reason', 'unknown')})")
        if reason in PULL_WAITING:
            return PodState(False, False, f"image pull failure for container {name} "
                                          f"({container.get('image', '')}): {reason} {message}".strip())
        if reason in HOPELESS_WAITING:
            return PodState(False, True, f"container {name} cannot start: {reason} {message}".strip())
        if terminated and phase != "Succeeded":
            return PodState(False, True, f"container {name} exited with code {terminated.get('exitCode', '?')} "
                                         f"({terminated.get('reason', 'Error')}) {terminated.get('message', '')}"
                            .strip())
    if phase == "Failed":
        return PodState(False, True, f"the SuperLink pod failed: {status.get('reason', '')} "
                                     f"{status.get('message', '')}".strip())
    if phase == "Succeeded":
        return PodState(False, True, "the SuperLink pod exited (its processes ended)")
    conditions = _conditions(status)
    scheduled = conditions.get("PodScheduled", {})
    if phase == "Pending" and scheduled.get("status") == "False":
        if scheduled.get("reason") == "Unschedulable":
            return PodState(False, False, "the SuperLink pod cannot be scheduled: "
                                          f"{scheduled.get('message', 'no node fits its requests')}")
        return PodState(False, False, f"the SuperLink pod is not scheduled yet: {scheduled.get('message', '')}"
                        .strip())
    if phase == "Pending":
        return PodState(False, False, "the SuperLink pod is pending (waiting for a node)" if not scheduled
                        else "the SuperLink pod is starting its containers")
    if phase == "Running":
        ready = conditions.get("Ready", {}).get("status") == "True"
        return PodState(ready, False, "" if ready else "the SuperLink pod runs but is not ready yet")
    return PodState(False, False, f"the SuperLink pod is {phase}")
