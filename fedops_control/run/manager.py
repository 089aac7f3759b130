"""Run lifecycle: start (SuperLink, agents, the Flower run), tracking from observer reports, stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fedops_common import runconfig as keys
from fedops_common.convert import utcnow
from fedops_common.frameworks import framework_imports
from fedops_common.logging import get_logger
from fedops_common.proto import access_pb2, agent_pb2, common_pb2
from fedops_common.telemetry import TelemetryWriter
from fedops_control import metrics
from fedops_control.access.tokens import TokenStore
from fedops_control.agents.sessions import AgentSessions
from fedops_control.clients.selection import (
    LabelSelection,
    Selection,
    candidates,
    choose,
    selection_to_dict,
)
from fedops_control.errors import FailedPrecondition, InvalidArgument, NotFound
from fedops_control.registry.store import ModelStore
from fedops_control.run import flower_control
from fedops_control.run.events import EventBus
from fedops_control.run.launch import RunLaunch
from fedops_control.run.launcher import SuperLinkLauncher
from fedops_control.run.lifecycle import ACTIVE_STATES, ActiveRun
from fedops_control.run.plan import TaskInputs, check_overrides, plan_run
from fedops_control.run.preflight import Preflight, app_requirements, summary
from fedops_control.run.reports import ClientReports, ServerReports
from fedops_control.state.db import DatabaseWriter
from fedops_control.state.models import (
    ClientRow,
    MembershipRow,
    ModelRow,
    RoundRow,
    RunRow,
    TaskRow,
)
from fedops_control.task.spec import check_keys, read_app_config
from fedops_control.task.strategy import StrategySpec

log = get_logger(__name__)
S = common_pb2  # enum namespace
SILENCE_BEFORE_STATUS_CHECK_S = 20.0
FLOWER_FINISH_WAIT_S = 10.0  # the longest a ServerApp gets to hand over its result after reporting its end
WARM_APPS_FALLBACK = "warm_apps_fallback"  # run event: a client's ClientApps are not warm forks


class RunManager(RunLaunch):
    """Owns every run of this control service."""

    def __init__(self, sessions: sessionmaker[Session], bus: EventBus, agents: AgentSessions,
                 models: ModelStore, launcher: SuperLinkLauncher, data_dir: Path, control_address: str,
                 writer: TelemetryWriter | None = None, tokens: TokenStore | None = None,
                 control_tls: tuple[Path | None, Path | None, Path | None] | None = None,
                 preflight: Preflight | None = None, write: DatabaseWriter | None = None) -> None:
        self._tokens = tokens  # None: the service runs without auth
        self._write = write  # the agents' database thread: a lost agent is marked after its last report
        self._preflight = preflight or Preflight()
        # (CA, cert, key) of our TLS port: a local ServerApp verifies us with the CA and, under mutual
        # TLS, presents our own certificate (it runs beside us, on our behalf); a launcher running
        # ServerApps elsewhere decides what they get instead (SuperLinkLauncher.app_route).
        self._control_tls = {name: str(Path(path).resolve()) if path else "" for name, path in zip(
            ("ca_file", "cert_file", "key_file"), control_tls or (None, None, None), strict=True)}
        self._sessions = sessions
        self._writer = writer
        self._bus = bus
        self._agents = agents
        self._models = models
        self._launcher = launcher
        self._data_dir = data_dir
        self._control_address = control_address
        self._active: dict[str, ActiveRun] = {}  # runs with a SuperLink, by run id
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finishing: set[str] = set()
        self._closing = False  # set on exit: agents' sessions then end because we do, not they
        self._server_reports = ServerReports(sessions, bus, agents, writer, self._round_notice,
                                             lambda run_id, outcome, reason: self._spawn(
                                                 self._finish_after_flower(run_id, outcome, reason)))
        self._client_reports = ClientReports(sessions, bus, writer)

    # ---------------------------------------------------------------- start
    async def start_run(self, task_id: str, selection: Selection, resume_from: str,
                        overrides: dict[str, Any]) -> RunRow:
        """Validate, resolve the clients (``selection``: ids, a label selection, or None for the task's
        default), preflight the agents, create the run row and launch it in the background."""
        with self._sessions() as db:
            task = db.get(TaskRow, task_id)
            if task is None:
                raise NotFound(f"task {task_id} not found")
            if selection is None and task.label_selection is not None:
                selection = LabelSelection.from_dict(task.label_selection)
            client_ids = self._admit_clients(db, task_id, selection)
            strategy = StrategySpec.from_dict(task.strategy)
            if len(client_ids) < strategy.min_clients:
                raise FailedPrecondition(f"{len(client_ids)} clients selected but the quorum (strategy.min_clients) "
                                         f"is {strategy.min_clients}")
            if resume_from:
                try:
                    resume_row = self._models.resolve(resume_from, task_id, strategy)
                except NotFound as err:
                    raise InvalidArgument("resume_from_model_id", str(err)) from None
                if resume_row.task_id != task_id:
                    raise InvalidArgument("resume_from_model_id", f"model belongs to task {resume_row.task_id}")
                resume_from = resume_row.id
            check_overrides(overrides, task.hyperparameters)
            app = dict(task.app)
            requirements: list[str] = []
            if "local_path" in app:  # a git app is fetched at launch: its keys are checked then
                app_dir = Path(app["local_path"]).expanduser().resolve()
                check_keys("hyperparameter_overrides", overrides, read_app_config(app_dir))
                requirements = app_requirements(app_dir)
            inputs = TaskInputs(task_id=task_id, title=task.title, app=app, strategy=strategy,
                                hyperparameters=dict(task.hyperparameters), client_config=dict(task.client_config))
            data_paths = {cid: db.get_one(ClientRow, cid).data_path for cid in client_ids}

        run_id = f"run-{uuid.uuid4().hex[:12]}"
        problems = await self._preflight.run(self._agents, client_ids, requirements, run_id, check_data_path=True)
        if any(problems.values()):
            raise FailedPrecondition("preflight failed: " + summary(problems))

        plan = plan_run(run_id, inputs, client_ids, data_paths, overrides)
        chosen = selection if isinstance(selection, LabelSelection) else client_ids
        with self._sessions.begin() as db:
            self._admit_clients(db, task_id, client_ids)  # again: another run may have taken one meanwhile
            run = RunRow(id=run_id, task_id=task_id, state=S.RUN_STATE_PENDING, client_ids=plan.client_ids,
                         total_rounds=plan.total_rounds, run_config=plan.run_config, node_configs=plan.node_configs,
                         strategy=strategy.to_dict(), config_hash=plan.config_hash, resumed_from_model_id=resume_from,
                         app_decides=plan.app_decides, selection=selection_to_dict(chosen))
            db.add(run)
            now = utcnow()
            for cid in client_ids:  # a later label selection takes the least recently selected first
                db.get_one(ClientRow, cid).last_selected_at = now
        metrics.run_started(task_id)
        how = f" ({chosen.describe()})" if isinstance(chosen, LabelSelection) else ""
        await self._bus.publish(run_id, "run_created",
                                f"run created for task {task_id} with {len(client_ids)} clients{how}",
                                data={"selection": selection_to_dict(chosen)})
        if plan.app_decides:
            await self._announce_app_decides(run_id, plan.app_decides)
        self._spawn(self._launch(run_id))
        return run

    async def expect_app(self, app: dict[str, Any]) -> None:
        """A task's app, created or changed: its runs are coming, so a launcher that keeps processes
        warm may import its frameworks now (a git app's are known once it is fetched, at its run)."""
        requirements = await _local_requirements(app)
        if requirements is not None:
            self._launcher.expect_frameworks(await asyncio.to_thread(framework_imports, requirements))

    async def prepare_clients(self, task_id: str, client_ids: list[str]) -> None:
        """Clients were selected for a task: its runs are coming, so each connected agent may start a
        spare ClientApp template that imports the app's frameworks now (``PrepareTask``,
        ``fedops_agent/spares.py``); a git app's are known once it is fetched, at its first run."""
        with self._sessions() as db:
            task = db.get(TaskRow, task_id)
            app = dict(task.app) if task is not None else {}
            wanted = task is not None and keys.warm_apps_wanted(dict(task.client_config or {}))
        requirements = await _local_requirements(app) if client_ids and wanted else None  # opted out: no spare
        if requirements is None:
            return
        command = agent_pb2.AgentCommand(prepare_task=agent_pb2.PrepareTask(task_id=task_id, requirements=requirements))
        for client_id in client_ids:
            self._agents.send(client_id, command)  # an agent offline now prepares after its next run

    def _admit_clients(self, db: Session, task_id: str, selection: Selection) -> list[str]:
        """The run's clients (default: the task's selection); each enrolled, connected and free. A label
        selection resolves to free clients with its labels (clients/selection.py)."""
        members = {m.client_id: m for m in db.query(MembershipRow).filter(MembershipRow.task_id == task_id)}
        busy_runs = db.query(RunRow.client_ids).filter(RunRow.state.in_(ACTIVE_STATES)).all()
        busy = {cid for (ids,) in busy_runs for cid in ids}
        if isinstance(selection, LabelSelection):
            return choose(candidates(db, self._agents, task_id, selection, busy), selection, task_id)
        client_ids = list(selection or [])
        if not client_ids:
            client_ids = sorted(cid for cid, m in members.items() if m.selected)
        if not client_ids:
            raise FailedPrecondition(f"task {task_id} has no selected clients: select clients or pass client_ids")
        if len(set(client_ids)) != len(client_ids):
            raise InvalidArgument("client_ids", "duplicate client id")
        for cid in client_ids:
            if db.get(ClientRow, cid) is None:
                raise InvalidArgument("client_ids", f"unknown client {cid!r}")
            if cid not in members:
                raise InvalidArgument("client_ids", f"client {cid!r} is not enrolled in task {task_id}")
            if not self._agents.is_connected(cid):
                raise FailedPrecondition(f"client {cid} is offline")
            if cid in busy:
                raise FailedPrecondition(f"client {cid} is already in an active run")
        return client_ids

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- stop / finish
    async def stop_run(self, run_id: str, hard: bool, by: str = "an operator") -> RunRow:
        """Cooperative: finish the current round, then stop. Hard: stop every process now. ``by`` (the
        caller's token name) goes into the reason and the stop event: the run says who stopped it."""
        run = self.get_run_row(run_id)
        if run.state == S.RUN_STATE_FINISHED:
            raise FailedPrecondition(f"run {run_id} already finished")
        if hard or run.state != S.RUN_STATE_RUNNING:
            with self._sessions.begin() as db:
                db.get_one(RunRow, run_id).stop_requested = "hard"
            active = self._active.get(run_id)
            handle = active.handle if active is not None else None
            if handle is not None and run.flower_run_id:
                try:
                    await flower_control.stop_run(handle, run.flower_run_id)
                except Exception as err:  # the SuperLink is killed next anyway
                    log.warning("flwr stop failed", run_id=run_id, error=str(err))
            await self.finish(run_id, S.RUN_OUTCOME_STOPPED, f"stopped by {by} (hard)")
        else:
            with self._sessions.begin() as db:
                db.get_one(RunRow, run_id).stop_requested = "cooperative"
            await self._bus.publish(run_id, "stop_requested", f"stop requested by {by}: finishing the current round",
                                    data={"by": by})
        return self.get_run_row(run_id)

    async def finish(self, run_id: str, outcome: common_pb2.RunOutcome.ValueType, reason: str,
                     record: dict[str, float] | None = None) -> None:
        """Mark the run finished, stop its SuperNodes and SuperLink. Idempotent. ``record`` goes into
        the run_finished event's data (Flower's running -> finished seconds of the ServerApp)."""
        if run_id in self._finishing:
            return
        self._finishing.add(run_id)
        try:
            with self._sessions.begin() as db:
                run = db.get(RunRow, run_id)
                if run is None or run.state == S.RUN_STATE_FINISHED:
                    return
                run.state, run.outcome, run.reason, run.finished_at = S.RUN_STATE_FINISHED, outcome, reason, utcnow()
                client_ids = list(run.client_ids)
                task_id = run.task_id
                for cid in client_ids:
                    client = db.get(ClientRow, cid)
                    if client is not None and client.current_run_id == run_id:
                        client.current_run_id = ""
                        if client.state not in (S.CLIENT_STATE_FAILED, S.CLIENT_STATE_OFFLINE):  # they left
                            client.state = (
                                S.CLIENT_STATE_FINISHED if outcome == S.RUN_OUTCOME_COMPLETED else S.CLIENT_STATE_ONLINE
                            )
                            client.state_reason = (
                                f"run {run_id} {common_pb2.RunOutcome.Name(outcome).split('_')[-1].lower()}"
                            )
                for round_row in db.query(RoundRow).filter(RoundRow.run_id == run_id, RoundRow.finished_at.is_(None)):
                    round_row.phase = "failed" if outcome != S.RUN_OUTCOME_COMPLETED else "done"
                    round_row.finished_at = utcnow()
            for cid in client_ids:
                self._agents.send(cid, agent_pb2.AgentCommand(stop_training=agent_pb2.StopTraining(
                    run_id=run_id, hard=outcome != S.RUN_OUTCOME_COMPLETED)))
            active = self._active.pop(run_id, None)
            if active is not None:
                await self._launcher.stop(active.handle)
            else:  # its SuperLink may still be starting: that start gives up now and cleans up
                self._launcher.abandon(run_id)
            if self._tokens is not None:  # the run's apps are gone: their token must not outlive them
                self._tokens.revoke_subject(access_pb2.TOKEN_KIND_RUN, run_id)
            name = common_pb2.RunOutcome.Name(outcome).split("_")[-1].lower()
            metrics.run_finished(run_id, task_id, name)
            await self._bus.publish(run_id, "run_finished", f"run {name}: {reason}",
                                    data={"outcome": name, **(record or {})})
        finally:
            self._finishing.discard(run_id)

    # ---------------------------------------------------------------- reports
    def task_of(self, run_id: str) -> str:
        """The task of a run ('' for no such run)."""
        with self._sessions() as db:
            run = db.get(RunRow, run_id)
            return run.task_id if run is not None else ""

    def get_run_row(self, run_id: str) -> RunRow:
        """The run's row or NotFound."""
        with self._sessions() as db:
            run = db.get(RunRow, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    async def on_server_event(self, event: agent_pb2.ServerEvent) -> bool:
        """Apply a ServerApp-side report; returns whether a cooperative stop is requested."""
        if (active := self._active.get(event.run_id)) is not None:
            active.reported()
        return await self._server_reports.apply(event)

    async def _finish_after_flower(self, run_id: str, outcome: common_pb2.RunOutcome.ValueType, reason: str) -> None:
        """The ServerApp reported its end: answer it at once, let it hand its result to the SuperLink
        and exit, then finish. Stopping the SuperLink first would leave it retrying against a dead port."""
        active, flower_run_id = self._active.get(run_id), self.get_run_row(run_id).flower_run_id
        handle = active.handle if active is not None else None
        record: dict[str, float] = {}  # Flower's record of the ServerApp, in the run_finished event
        if handle is not None and flower_run_id:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + FLOWER_FINISH_WAIT_S
            while loop.time() < deadline:
                try:
                    run = await flower_control.get_run(handle, flower_run_id)
                except flower_control.FlowerControlError as err:
                    log.warning("could not read the Flower run's status", run_id=run_id, error=str(err))
                    break
                if flower_control.status_text(run).startswith("finished"):
                    if (seconds := flower_control.serverapp_seconds(run)) is not None:
                        record["flower_serverapp_s"] = seconds
                    break
                await asyncio.sleep(0.2)
        await self.finish(run_id, outcome, reason, record)

    def _round_notice(self, db: Session, run: RunRow, number: int) -> agent_pb2.AgentCommand:
        """The RoundStarted command: which global model version round ``number`` trains from."""
        previous = (db.query(ModelRow).filter(ModelRow.run_id == run.id, ModelRow.round < number)
                    .order_by(ModelRow.round.desc()).first())
        if previous is None and run.resumed_from_model_id:
            previous = db.get(ModelRow, run.resumed_from_model_id)
        return agent_pb2.AgentCommand(round_started=agent_pb2.RoundStarted(
            run_id=run.id, round=number, model_version=previous.version if previous else 0,
            model_id=previous.id if previous else ""))

    async def on_client_event(self, event: agent_pb2.ClientEvent) -> None:
        """Apply a ClientApp-side report: node id mapping and the client's own result."""
        await self._client_reports.apply(event)

    async def on_model_stored(self, run_id: str, model_id: str, version: int, round_number: int) -> None:
        """Announce a stored global model."""
        await self._bus.publish(run_id, "model_stored", f"global model v{version} stored ({model_id})",
                                round=round_number, data={"model_id": model_id, "version": version})

    async def on_agent_lost(self, client_id: str) -> None:
        """An agent's session ended: offline, or failed when it was in an active run."""
        if self._closing:
            return
        run_id = await self._write(self._mark_lost, client_id) if self._write else self._mark_lost(client_id)
        if run_id:
            metrics.client_failed(client_id)
            await self._bus.publish(run_id, "client_failed", f"{client_id}: agent disconnected", client_id=client_id)
        await self._bus.notify()

    def _mark_lost(self, client_id: str) -> str:
        """Store a lost agent's state; the active run it was in ("" when none)."""
        with self._sessions.begin() as db:
            client = db.get(ClientRow, client_id)
            if client is None:
                return ""
            run = db.get(RunRow, client.current_run_id) if client.current_run_id else None
            if run is not None and run.state in ACTIVE_STATES:
                client.state, client.state_reason = S.CLIENT_STATE_FAILED, f"agent disconnected during run {run.id}"
                return run.id
            client.state, client.state_reason = S.CLIENT_STATE_OFFLINE, "agent disconnected"
            return ""

    async def on_training_report(self, client_id: str, report: agent_pb2.TrainingReport) -> None:
        """The agent's SuperNode for a run exited."""
        with self._sessions.begin() as db:
            run = db.get(RunRow, report.run_id)
            active = run is not None and run.state in ACTIVE_STATES
            client = db.get(ClientRow, client_id)
            if active and not report.succeeded and client is not None:
                client.state, client.state_reason = S.CLIENT_STATE_FAILED, report.reason
        if active and not report.succeeded:
            metrics.client_failed(client_id)
            await self._bus.publish(report.run_id, "client_failed", f"{client_id}: {report.reason}",
                                    client_id=client_id)

    async def on_run_notice(self, client_id: str, notice: agent_pb2.RunNotice) -> None:
        """Something about a run the agent saw, shown among the run's events (if it is the client's run)."""
        with self._sessions() as db:
            run = db.get(RunRow, notice.run_id)
            if run is None or client_id not in run.client_ids:
                return
        if notice.kind == agent_pb2.RunNotice.KIND_WARM_APPS_FALLBACK:
            await self._bus.publish(notice.run_id, WARM_APPS_FALLBACK, f"{client_id}: ClientApps run as new "
                                    f"processes (Flower's own executor): {notice.detail}", client_id=client_id)

    # ---------------------------------------------------------------- watchdog
    async def watchdog(self, interval_s: float = 2.0) -> None:
        """Catch runs whose ServerApp died without reporting (checked with the Control API, as `flwr ls` does)."""
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for run_id, active in list(self._active.items()):
                try:
                    run = self.get_run_row(run_id)
                    if run.state != S.RUN_STATE_RUNNING:
                        continue
                    if not self._launcher.is_alive(active.handle):
                        await self.finish(run_id, S.RUN_OUTCOME_FAILED, self._launcher.why_down(active.handle)
                                          or "SuperLink exited")
                        continue
                    if now - active.last_report < SILENCE_BEFORE_STATUS_CHECK_S:
                        continue
                    active.last_report = now
                    status = flower_control.status_text(await flower_control.get_run(active.handle,
                                                                                     run.flower_run_id))
                    if status.startswith("finished"):
                        outcome = S.RUN_OUTCOME_COMPLETED if status.endswith("completed") else S.RUN_OUTCOME_FAILED
                        await self.finish(run_id, outcome, f"Flower reports {status} without a ServerApp report")
                except Exception as err:  # keep watching the other runs
                    log.warning("watchdog check failed", run_id=run_id, error=str(err))

    async def shutdown(self, stop_runs: bool = False) -> None:
        """On exit: by default leave active runs going (their SuperLinks, ServerApps and SuperNodes
        keep training and the next start of this service re-attaches them); with ``stop_runs``,
        fail and stop them."""
        self._closing = True
        if stop_runs:
            for run_id in list(self._active):
                await self.finish(run_id, S.RUN_OUTCOME_FAILED, "control service shut down")
        elif self._active:
            log.info("leaving active runs to the next start of the control service", runs=sorted(self._active))
        self._active.clear()

    async def recover(self) -> None:
        """After a restart: re-attach running runs to their SuperLinks, launch again those whose
        SuperLink is gone (see :mod:`~fedops_control.run.continuation`), fail those that were starting."""
        with self._sessions() as db:
            active = [(r.id, r.state, r.superlink_address, r.flower_run_id)
                      for r in db.query(RunRow).filter(RunRow.state.in_(ACTIVE_STATES))]
        for run_id, state, address, flower_run_id in active:
            handle = None
            if state == S.RUN_STATE_RUNNING and address and flower_run_id:
                handle = self._launcher.adopt(run_id, self._data_dir / "runs" / run_id, address)
            if handle is None and state == S.RUN_STATE_RUNNING:
                self._spawn(self._continue(run_id))  # waits for the run's agents to reconnect
                continue
            if handle is None:
                await self.finish(run_id, S.RUN_OUTCOME_FAILED, "control service restarted while the run was starting")
                continue
            self._active[run_id] = ActiveRun(handle)
            await self._bus.publish(run_id, "control_restarted",
                                    "control service restarted; run re-attached to its SuperLink")


async def _local_requirements(app: dict[str, Any]) -> list[str] | None:
    """The declared dependencies of a local app; None for a git app (known once fetched, at its run)
    or a broken one (reported at StartRun)."""
    if "local_path" not in app:
        return None
    try:
        return await asyncio.to_thread(app_requirements, Path(app["local_path"]).expanduser().resolve())
    except InvalidArgument:
        return None
