"""Launching a run: its SuperLink (while the app is fetched and bundled), the agents' SuperNodes,
and the Flower run. A part of :class:`~fedops_control.run.manager.RunManager`, kept in its own
module: the steps run in order, each checking the lifecycle before it commands anything."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedops_common import runconfig as keys
from fedops_common.convert import utcnow
from fedops_common.frameworks import framework_imports
from fedops_common.logging import get_logger
from fedops_common.proto import access_pb2, agent_pb2, common_pb2
from fedops_common.security import write_secret
from fedops_control.errors import FailedPrecondition
from fedops_control.run import bundle, flower_control
from fedops_control.run.continuation import RELAUNCHED, Continuation, plan_continuation
from fedops_control.run.launcher import ControlRoute, SuperLinkHandle
from fedops_control.run.lifecycle import ActiveRun, check_transition
from fedops_control.run.preflight import app_requirements
from fedops_control.state.models import ClientResultRow, ClientRow, EventRow, ModelRow, RoundRow, RunRow, TaskRow
from fedops_control.task.spec import check_keys
from fedops_control.task.strategy import StrategySpec

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from fedops_control.access.tokens import TokenStore
    from fedops_control.agents.sessions import AgentSessions
    from fedops_control.run.events import EventBus
    from fedops_control.run.launcher import SuperLinkLauncher

log = get_logger(__name__)
S = common_pb2
# How long a run launched again after a restart waits for its agents to reconnect (they retry
# with backoff capped at a few seconds, so they are back well within this).
AGENT_RECONNECT_WAIT_S = 60.0


def _coerce(value: Any, default: Any) -> Any:
    """Give a rendered value the type of the app's default (Struct numbers arrive as floats)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return value
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    return value


class RunLaunch:
    """The launch steps of RunManager, which provides what is declared here."""

    _sessions: sessionmaker[Session]
    _launcher: SuperLinkLauncher
    _agents: AgentSessions
    _bus: EventBus
    _tokens: TokenStore | None
    _control_tls: dict[str, str]  # ControlRoute's ca_file, cert_file, key_file: our TLS files
    _control_address: str
    _data_dir: Path
    _active: dict[str, ActiveRun]

    def get_run_row(self, run_id: str) -> RunRow:
        raise NotImplementedError  # RunManager's

    async def finish(self, run_id: str, outcome: common_pb2.RunOutcome.ValueType, reason: str) -> None:
        raise NotImplementedError  # RunManager's

    async def _set_state(self, run_id: str, state: common_pb2.RunState.ValueType, message: str) -> None:
        with self._sessions.begin() as db:
            run = db.get_one(RunRow, run_id)
            check_transition(run, state)  # stopped while starting: it stays finished
            run.state = state
            if state == S.RUN_STATE_RUNNING:
                run.started_at = utcnow()
        await self._bus.publish(run_id, "run_state", message, data={"state": common_pb2.RunState.Name(state)})

    async def _announce_app_decides(self, run_id: str, settings: list[str]) -> None:
        await self._bus.publish(run_id, "app_decides", "the app hard-codes " + ", ".join(
            f"strategy.{name}" for name in settings) + " (no run-config key receives it): the app decides",
            data={"settings": settings})

    async def _launch(self, run_id: str, again: Continuation | None = None) -> None:
        """Launch the run; ``again``: launch it anew after its SuperLink was lost (it stays running)."""
        try:
            if again is None:
                await self._set_state(run_id, S.RUN_STATE_STARTING, "starting SuperLink and SuperNodes")
            with self._sessions() as db:
                run = db.get_one(RunRow, run_id)
                task = db.get_one(TaskRow, run.task_id)
                app, strategy, task_id = dict(task.app), StrategySpec.from_dict(run.strategy), task.id
                run_config, node_configs = dict(run.run_config), dict(run.node_configs)
                client_ids = list(run.client_ids)
                resume = run.resumed_from_model_id
                launch = 1 + db.query(EventRow).filter(EventRow.run_id == run_id,
                                                       EventRow.kind == RELAUNCHED).count()
            workdir = self._data_dir / "runs" / run_id
            if again is not None:
                resume, run_config[again.rounds_key] = again.resume_model_id, again.remaining
                client_ids = [cid for cid in client_ids if self._agents.is_connected(cid)]
                if workdir.exists():  # the lost launch's files stay beside, for diagnosis
                    workdir.rename(workdir.with_name(f"{run_id}.launch-{launch - 1}"))
            workdir.mkdir(parents=True, exist_ok=True)
            control = self._control_route(run_id, workdir)
            route = self._launcher.app_route(control)  # what the run's ServerApp is told
            # The SuperLink starts while the app is fetched and bundled: both take seconds.
            link = asyncio.create_task(self._start_superlink(run_id, workdir, control))
            try:
                app_dir, overrides = await self._prepare_app(run_id, task_id, app, strategy, run_config, resume,
                                                             workdir, len(client_ids), route,
                                                             again.offset if again is not None else 0)
            except BaseException:
                self._launcher.abandon(run_id)  # the app cannot run: a SuperLink still starting gives up too
                await asyncio.wait([link])  # one that started is in self._active: finish() stops it
                if not link.cancelled():
                    link.exception()  # retrieved: the app's error, raised next, is the run's reason
                raise
            handle = await link
            # The next SuperLink (the spare, started once this run's stops) is warm for this app too.
            self._launcher.expect_frameworks(await asyncio.to_thread(framework_imports, app_requirements(app_dir)))
            with self._sessions.begin() as db:
                db.get_one(RunRow, run_id).superlink_address = handle.address
                public_keys = {cid: db.get_one(ClientRow, cid).supernode_public_key for cid in client_ids}
            if handle.ca_file is not None:  # SuperNode authentication: admit this run's agents only
                missing = sorted(cid for cid, key in public_keys.items() if not key)
                if missing:
                    raise FailedPrecondition(f"client {missing[0]} sent no SuperNode public key; upgrade its agent")
                await asyncio.gather(*(flower_control.register_supernode(handle, public_keys[cid], cid)
                                       for cid in client_ids))
            # A stop may have come during any await above; from here to the commands nothing awaits.
            run = self.get_run_row(run_id)
            if again is None:
                check_transition(run, S.RUN_STATE_RUNNING)
            elif run.state != S.RUN_STATE_RUNNING:
                raise FailedPrecondition(f"run {run_id} was stopped while it was launched again")
            retry = agent_pb2.RetryPolicy(max_restarts=strategy.client_max_restarts,
                                          backoff_initial_s=strategy.client_restart_backoff_s,
                                          backoff_max_s=30.0)
            for cid in client_ids:
                node_config = {k: _toml_literal(v) for k, v in node_configs[cid].items()}
                node_config[keys.NODE_RUN_ID] = _toml_literal(run_id)
                node_config[keys.NODE_TASK_ID] = _toml_literal(task_id)
                command = agent_pb2.AgentCommand(start_training=agent_pb2.StartTraining(
                    run_id=run_id, superlink_address=handle.address, node_config=node_config,
                    superlink_root_certificates=handle.root_certificates, retry=retry, launch=launch))
                if not self._agents.send(cid, command):
                    raise FailedPrecondition(f"client {cid} went offline before the run started")
                with self._sessions.begin() as db:
                    client = db.get_one(ClientRow, cid)
                    client.current_run_id, client.state = run_id, S.CLIENT_STATE_TRAINING
                    client.state_reason = f"training in run {run_id}"
            overrides_file = flower_control.write_overrides(workdir / "run-config.toml", overrides)
            flower_run_id = await flower_control.submit_run(handle, app_dir, overrides_file)
            with self._sessions.begin() as db:
                db.get_one(RunRow, run_id).flower_run_id = flower_run_id
            self._active[run_id].reported()
            if again is None:
                await self._set_state(run_id, S.RUN_STATE_RUNNING, f"Flower run {flower_run_id} submitted")
            else:
                await self._bus.publish(run_id, "run_state", f"Flower run {flower_run_id} submitted (launch "
                                        f"{launch}) to {len(client_ids)} clients: {again.summary}")
        except Exception as err:  # any launch failure fails the run with the reason
            if self.get_run_row(run_id).state == S.RUN_STATE_FINISHED:
                log.info("launch abandoned: the run was stopped while starting", run_id=run_id, error=str(err))
                return
            log.exception("run launch failed", run_id=run_id)
            reason = str(err)  # InvalidArgument: "field: message"
            await self.finish(run_id, S.RUN_OUTCOME_FAILED, f"launch failed: {reason}")

    async def _continue(self, run_id: str, reconnect_wait_s: float = AGENT_RECONNECT_WAIT_S) -> None:
        """After a restart that took the run's SuperLink down: launch the run again from its latest
        model for the rounds that remain, once its agents are back (see :mod:`continuation`)."""
        with self._sessions() as db:
            run = db.get_one(RunRow, run_id)
            latest = (db.query(ModelRow).filter(ModelRow.run_id == run_id, ModelRow.round > 0)
                      .order_by(ModelRow.round.desc()).first())
            again, client_ids = plan_continuation(run, latest), list(run.client_ids)
            needed = StrategySpec.from_dict(run.strategy).min_clients
        lost = "control service restarted while the run was running and its SuperLink is gone"
        if isinstance(again, str):
            await self.finish(run_id, S.RUN_OUTCOME_FAILED, f"{lost}; {again}")
            return
        if again.remaining == 0:
            await self.finish(run_id, S.RUN_OUTCOME_COMPLETED, f"{lost}; all its rounds had finished")
            return
        await self._bus.publish(run_id, RELAUNCHED, f"{lost}: launching it again for {again.summary}",
                                data={"offset": again.offset, "remaining": again.remaining,
                                      "resume_model_id": again.resume_model_id})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + reconnect_wait_s
        while loop.time() < deadline and not all(self._agents.is_connected(cid) for cid in client_ids):
            await asyncio.sleep(0.5)
        back = [cid for cid in client_ids if self._agents.is_connected(cid)]
        if len(back) < needed:
            missing = ", ".join(sorted(set(client_ids) - set(back)))
            await self.finish(run_id, S.RUN_OUTCOME_FAILED, f"{lost}; only {len(back)} of its clients came back "
                                                            f"within {reconnect_wait_s:.0f}s ({needed} needed; "
                                                            f"missing: {missing})")
            return
        with self._sessions.begin() as db:  # the round in flight runs again from its start
            db.query(ClientResultRow).filter(ClientResultRow.run_id == run_id,
                                             ClientResultRow.round > again.offset).delete()
            db.query(RoundRow).filter(RoundRow.run_id == run_id, RoundRow.number > again.offset).delete()
            row = db.get_one(RunRow, run_id)
            row.current_round, row.flower_run_id, row.superlink_address = again.offset, "", ""
        await self._launch(run_id, again)

    def _control_route(self, run_id: str, workdir: Path) -> ControlRoute:
        """How a process on this host reaches this service for the run: our address and TLS files,
        and a token valid for this run only (the run's apps report with it; revoked when it ends)."""
        credential_file = ""
        if self._tokens is not None:
            secret, _ = self._tokens.issue(access_pb2.TOKEN_KIND_RUN, access_pb2.ROLE_RUN, f"run {run_id}",
                                           subject=run_id, created_by="fedops-control")
            write_secret(workdir / "run.token", secret)
            credential_file = str((workdir / "run.token").resolve())
        return ControlRoute(self._control_address, credential_file, **self._control_tls)

    async def _start_superlink(self, run_id: str, workdir: Path, control: ControlRoute) -> SuperLinkHandle:
        # Stopped before its SuperLink was asked for: none is started (from here to the launcher's
        # start nothing awaits, so a later stop reaches that start through abandon()).
        if self.get_run_row(run_id).state == S.RUN_STATE_FINISHED:
            raise FailedPrecondition(f"run {run_id} was stopped while starting")
        handle = await self._launcher.start(run_id, workdir, control)
        self._active[run_id] = ActiveRun(handle)
        run = self.get_run_row(run_id)
        if run.state == S.RUN_STATE_FINISHED:  # stopped while its SuperLink started
            self._active.pop(run_id, None)
            await self._launcher.stop(handle)
            check_transition(run, S.RUN_STATE_RUNNING)
        return handle

    async def _prepare_app(self, run_id: str, task_id: str, app: dict[str, Any], strategy: StrategySpec,
                           run_config: dict[str, Any], resume: str, workdir: Path,
                           node_count: int, route: ControlRoute,
                           round_offset: int = 0) -> tuple[Path, dict[str, Any]]:
        """Fetch the task's app, bundle it with our wrappers; returns the bundle and the run-config overrides.
        ``route``: how the run's ServerApp reaches this service (the launcher's :meth:`app_route`)."""
        source = await asyncio.to_thread(bundle.fetch_app, app, workdir)
        fedops_config = {
            keys.RUN_ID: run_id, keys.TASK_ID: task_id, **route.run_config(),
            keys.ROUND_TIMEOUT: strategy.round_timeout_s, keys.QUORUM: strategy.min_clients,
            keys.NODE_COUNT: node_count, keys.RESUME_MODEL_ID: resume, keys.ROUND_OFFSET: round_offset,
        }
        app_dir = workdir / "app"
        app_config = await asyncio.to_thread(bundle.build_bundle, source, app_dir, fedops_config)
        # Strategy settings whose key the app lacks (a git app, checked only now, or an app edited
        # since the task was made) are the app's to decide, and the run says so.
        derived = {key: setting for setting, key in strategy.run_config_keys.items() if key}
        undelivered = sorted(derived[key] for key in set(run_config) - set(app_config) if key in derived)
        if undelivered:
            with self._sessions.begin() as db:
                row = db.get_one(RunRow, run_id)
                row.app_decides = sorted({*row.app_decides, *undelivered})
                if "rounds" in undelivered:
                    row.total_rounds = 0  # known once the app's strategy starts
            await self._announce_app_decides(run_id, undelivered)
        run_config = {k: v for k, v in run_config.items() if k in app_config or k not in derived}
        check_keys("hyperparameters", run_config, app_config)
        return app_dir, {k: _coerce(v, app_config[k]) for k, v in run_config.items()}



def _toml_literal(value: Any) -> str:
    """A node-config value as the TOML literal `flower-supernode --node-config` expects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))
