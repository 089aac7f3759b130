"""The ServerApp FedOps runs in place of the user's: it loads theirs and observes it.

The user's app is untouched. It gets an :class:`ObservedGrid`, and the places where every
API style runs its rounds are hooked for the life of this process: ``Strategy.start`` of
the Message API (:mod:`message_strategy`), and ``DefaultWorkflow`` / ``Server.fit`` of the
older API (:mod:`legacy`). An app that drives the Grid itself is still seen message by
message. The app's own ``print()`` output goes to the run's logs.
"""

from __future__ import annotations

import os

from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.object_ref import load_app

from fedops_common import runconfig as keys
from fedops_common.logging import bind_ids, get_logger
from fedops_common.observer import ObserverClient, npz_to_arrays
from fedops_common.proto import agent_pb2
from fedops_common.telemetry.actor import app_process_telemetry
from fedops_flower.appoutput import capture_output
from fedops_flower.serverapp import legacy, message_strategy
from fedops_flower.serverapp.grid import ObservedGrid
from fedops_flower.serverapp.reporter import (
    CooperativeStop,
    QuorumNotMet,
    Reporter,
    RunState,
)

A = agent_pb2
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Load the user's ServerApp, run it on an observed Grid, report the outcome."""
    cfg = context.run_config
    run_id = str(cfg[keys.RUN_ID])
    telemetry = app_process_telemetry("fedops-serverapp")
    bind_ids(run_id=run_id, task_id=str(cfg.get(keys.TASK_ID, "")), flower_run_id=str(context.run_id))
    restore_output = capture_output()
    log = get_logger(__name__)
    observer = ObserverClient.from_config(cfg)
    state = RunState(run_id, float(cfg[keys.ROUND_TIMEOUT]), int(cfg[keys.QUORUM]), int(cfg.get(keys.NODE_COUNT, 0)),
                     round_offset=int(cfg.get(keys.ROUND_OFFSET, 0)))
    reporter = Reporter(observer, state)
    resume = None
    if cfg.get(keys.RESUME_MODEL_ID):
        resume = npz_to_arrays(observer.fetch_model(str(cfg[keys.RESUME_MODEL_ID])))
        log.info("resuming from stored model", model_id=cfg[keys.RESUME_MODEL_ID])
    undo = [message_strategy.observe(reporter, ArrayRecord({k: Array(v) for k, v in resume.items()})
                                     if resume is not None else None),
            legacy.observe(reporter, resume)]
    reporter.send(0, app_started=A.AppStarted(flower_run_id=str(context.run_id),
                                              warm_fork=os.environ.get(keys.WARM_FORK_ENV) == "1"))
    observed = ObservedGrid(grid, reporter)
    try:
        inner = load_app(str(cfg[keys.INNER_SERVERAPP]), RuntimeError)
        if not isinstance(inner, ServerApp):
            raise TypeError(f"{cfg[keys.INNER_SERVERAPP]} is not a flwr ServerApp")
        inner(observed, context)
    except CooperativeStop as stop:
        log.info("run stopped cooperatively", round=state.current_round)
        reporter.send(state.current_round, app_finished=A.AppFinished(stopped=True, message=str(stop)))
    except Exception as err:  # report every failure, then let Flower mark the run failed
        log.exception("ServerApp failed", error=str(err))
        failed = A.AppFailed(error_type=type(err).__name__, message=str(err))
        if isinstance(err, QuorumNotMet):
            failed.quorum.CopyFrom(err.failure)
        reporter.send(state.current_round, app_failed=failed)
        raise
    else:
        reporter.send(state.current_round, app_finished=A.AppFinished(message="completed"))
    finally:
        for step in undo:
            step()
        restore_output()
        observer.close()
        log.info("ServerApp exiting", round=state.current_round)
        if telemetry is not None:
            telemetry.close()
