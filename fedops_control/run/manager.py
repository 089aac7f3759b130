"""Run lifecycle: start (SuperLink, agents, the Flower run), tracking from observer reports, stop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fedops_common.convert import utcnow
from fedops_common.logging import get_logger
from fedops_common.proc import pid_alive
from fedops_common.observer import KEY_CONTROL, KEY_CREDENTIAL_FILE, KEY_TLS_CA_FILE, KEY_TLS_CERT_FILE, KEY_TLS_KEY_FILE
from fedops_common.proto import access_pb2, agent_pb2, common_pb2
from fedops_common.security import write_secret
from fedops_common.telemetry import TelemetryWriter
from fedops_control import metrics
from fedops_control.access.tokens import TokenStore
from fedops_control.clients.registry import AgentRegistry
from fedops_control.registry.store import ModelStore
from fedops_control.run import bundle, flower_control
from fedops_control.run.events import EventBus
from fedops_control.run.launcher import SuperLinkHandle, SuperLinkLauncher
from fedops_control.state.models import (ClientResultRow, ClientRow, MembershipRow, ModelRow, RoundRow, RunRow,
                                         TaskRow)
from fedops_control.task.errors import FailedPrecondition, InvalidArgument, NotFound
from fedops_control.task.spec import KEY_PATTERN
from fedops_control.task.templating import check_template, render_client_config, render_hyperparameters

log = get_logger(__name__)
S = common_pb2  # enum namespace
ACTIVE_STATES = (S.RUN_STATE_PENDING, S.RUN_STATE_STARTING, S.RUN_STATE_RUNNING)
SILENCE_BEFORE_STATUS_CHECK_S = 20.0
FLOWER_FINISH_WAIT_S = 10.0  # the longest a ServerApp gets to hand over its result after reporting its end


def _coerce(value: Any, default: Any) -> Any:
    """Give a rendered value the type of the app's default (Struct numbers arrive as floats)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return value
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    return value


class RunManager:
    """Owns every run of this control service."""

    def __init__(self, sessions: sessionmaker[Session], bus: EventBus, agents: AgentRegistry,
                 models: ModelStore, launcher: SuperLinkLauncher, data_dir: Path, control_address: str,
                 writer: TelemetryWriter | None = None, tokens: TokenStore | None = None,
                 control_tls: tuple[Path | None, Path | None, Path | None] | None = None) -> None:
        self._tokens = tokens  # None: the service runs without auth
        # (CA, cert, key) of our TLS port: the ServerApp verifies us with the CA and, under mutual
        # TLS, presents our own certificate (it runs beside us, on our behalf).
        self._control_tls = {key: str(Path(path).resolve()) if path else "" for key, path in zip(
            (KEY_TLS_CA_FILE, KEY_TLS_CERT_FILE, KEY_TLS_KEY_FILE), control_tls or (None, None, None))}
        self._sessions = sessions
        self._writer = writer
        self._bus = bus
        self._agents = agents
        self._models = models
        self._launcher = launcher
        self._data_dir = data_dir
        self._control_address = control_address
        self._links: dict[str, SuperLinkHandle] = {}
        self._last_report: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finishing: set[str] = set()
        self._closing = False  # set on exit: agents' sessions then end because we do, not they

    # ---------------------------------------------------------------- start
    async def start_run(self, task_id: str, client_ids: list[str], resume_from: str,
                        overrides: dict[str, Any]) -> RunRow:
        """Validate, create the run row and launch it in the background."""
        with self._sessions.begin() as db:
            task = db.get(TaskRow, task_id)
            if task is None:
                raise NotFound(f"task {task_id} not found")
            members = {m.client_id: m for m in db.query(MembershipRow).filter(MembershipRow.task_id == task_id)}
            if not client_ids:
                client_ids = sorted(cid for cid, m in members.items() if m.selected)
            if not client_ids:
                raise FailedPrecondition(f"task {task_id} has no selected clients: select clients or pass client_ids")
            if len(set(client_ids)) != len(client_ids):
                raise InvalidArgument("client_ids", "duplicate client id")
            clients: dict[str, ClientRow] = {}
            for cid in client_ids:
                client = db.get(ClientRow, cid)
                if client is None:
                    raise InvalidArgument("client_ids", f"unknown client {cid!r}")
                if cid not in members:
                    raise InvalidArgument("client_ids", f"client {cid!r} is not enrolled in task {task_id}")
                if not self._agents.is_connected(cid):
                    raise FailedPrecondition(f"client {cid} is offline")
                busy = db.query(RunRow).filter(RunRow.state.in_(ACTIVE_STATES)).all()
                if any(cid in r.client_ids for r in busy):
                    raise FailedPrecondition(f"client {cid} is already in an active run")
                clients[cid] = client
            quorum = int(task.strategy["min_clients"])
            if len(client_ids) < quorum:
                raise FailedPrecondition(f"{len(client_ids)} clients selected but the quorum (strategy.min_clients) is {quorum}")
            if resume_from:
                try:
                    resume_row = self._models.resolve(resume_from, task_id, task.strategy)
                except NotFound as err:
                    raise InvalidArgument("resume_from_model_id", str(err)) from None
                if resume_row.task_id != task_id:
                    raise InvalidArgument("resume_from_model_id", f"model belongs to task {resume_row.task_id}")
                resume_from = resume_row.id
            for key, value in overrides.items():
                if not KEY_PATTERN.match(key) or isinstance(value, (dict, list)) or value is None:
                    raise InvalidArgument(f"hyperparameter_overrides.{key}", "invalid key or value")
                check_template(f"hyperparameter_overrides.{key}", value, set(task.hyperparameters) | set(overrides), False)

            run_id = f"run-{uuid.uuid4().hex[:12]}"
            strategy = dict(task.strategy)
            variables = {
                "run.id": run_id, "run.client_count": len(client_ids), "run.client_ids": ",".join(client_ids),
                "task.id": task.id, "task.title": task.title,
                **{f"strategy.{k}": v for k, v in strategy.items() if not isinstance(v, dict)},
            }
            hyperparameters = render_hyperparameters({**task.hyperparameters, **overrides}, variables)
            for setting, key in strategy["run_config_keys"].items():
                if key and key not in hyperparameters:
                    hyperparameters[key] = strategy[setting]
            node_configs = {}
            for index, cid in enumerate(client_ids):
                client_vars = {**variables, "client.id": cid, "client.index": index,
                               "client.data_path": clients[cid].data_path}
                node_configs[cid] = render_client_config(task.client_config, client_vars)
            config_hash = hashlib.sha256(json.dumps(
                {"app": task.app, "strategy": strategy, "hp": hyperparameters, "nodes": node_configs},
                sort_keys=True, default=str).encode()).hexdigest()
            run = RunRow(id=run_id, task_id=task_id, state=S.RUN_STATE_PENDING, client_ids=client_ids,
                         total_rounds=int(strategy["rounds"]), run_config=hyperparameters, node_configs=node_configs,
                         strategy=strategy, config_hash=config_hash, resumed_from_model_id=resume_from)
            db.add(run)
        metrics.RUNS_STARTED.labels(task_id).inc()
        await self._bus.publish(run_id, "run_created", f"run created for task {task_id} with {len(client_ids)} clients")
        self._spawn(self._launch(run_id))
        return run

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set_state(self, run_id: str, state: int, message: str) -> None:
        with self._sessions.begin() as db:
            run = db.get(RunRow, run_id)
            _raise_if_finished(run)  # stopped while starting: it stays finished
            run.state = state
            if state == S.RUN_STATE_RUNNING:
                run.started_at = utcnow()
        await self._bus.publish(run_id, "run_state", message, data={"state": common_pb2.RunState.Name(state)})

    async def _launch(self, run_id: str) -> None:
        try:
            await self._set_state(run_id, S.RUN_STATE_STARTING, "starting SuperLink and SuperNodes")
            with self._sessions() as db:
                run = db.get(RunRow, run_id)
                task = db.get(TaskRow, run.task_id)
                app, strategy, task_id = dict(task.app), dict(run.strategy), task.id
                run_config, node_configs, client_ids = dict(run.run_config), dict(run.node_configs), list(run.client_ids)
                resume = run.resumed_from_model_id
            workdir = self._data_dir / "runs" / run_id
            workdir.mkdir(parents=True, exist_ok=True)
            # The SuperLink starts while the app is fetched and bundled: both take seconds.
            link = asyncio.create_task(self._start_superlink(run_id, workdir))
            try:
                app_dir, overrides = await self._prepare_app(run_id, task_id, app, strategy, run_config, resume,
                                                             workdir, len(client_ids))
            except BaseException:
                await asyncio.wait([link])  # registered in self._links: finish() stops it
                raise
            handle = await link
            with self._sessions.begin() as db:
                db.get(RunRow, run_id).superlink_address = handle.address
                keys = {cid: db.get(ClientRow, cid).supernode_public_key for cid in client_ids}
            if handle.ca_file is not None:  # SuperNode authentication: admit this run's agents only
                missing = sorted(cid for cid, key in keys.items() if not key)
                if missing:
                    raise FailedPrecondition(f"client {missing[0]} sent no SuperNode public key; upgrade its agent")
                await asyncio.gather(*(flower_control.register_supernode(handle, keys[cid], cid)
                                       for cid in client_ids))
            # A stop may have come during any await above; from here to the commands nothing awaits.
            _raise_if_finished(self.get_run_row(run_id))
            retry = agent_pb2.RetryPolicy(max_restarts=int(strategy.get("client_max_restarts", 2)),
                                          backoff_initial_s=float(strategy.get("client_restart_backoff_s", 1.0)),
                                          backoff_max_s=30.0)
            for cid in client_ids:
                node_config = {k: _toml_literal(v) for k, v in node_configs[cid].items()}
                node_config["fedops-run-id"] = _toml_literal(run_id)
                node_config["fedops-task-id"] = _toml_literal(task_id)
                command = agent_pb2.AgentCommand(start_training=agent_pb2.StartTraining(
                    run_id=run_id, superlink_address=handle.address, node_config=node_config,
                    superlink_root_certificates=handle.root_certificates, retry=retry))
                if not self._agents.send(cid, command):
                    raise FailedPrecondition(f"client {cid} went offline before the run started")
                with self._sessions.begin() as db:
                    client = db.get(ClientRow, cid)
                    client.current_run_id, client.state = run_id, S.CLIENT_STATE_TRAINING
                    client.state_reason = f"training in run {run_id}"
            overrides_file = flower_control.write_overrides(workdir / "run-config.toml", overrides)
            flower_run_id = await flower_control.submit_run(handle, app_dir, overrides_file)
            with self._sessions.begin() as db:
                db.get(RunRow, run_id).flower_run_id = flower_run_id
            self._last_report[run_id] = asyncio.get_running_loop().time()
            await self._set_state(run_id, S.RUN_STATE_RUNNING, f"Flower run {flower_run_id} submitted")
        except Exception as err:  # any launch failure fails the run with the reason
            if self.get_run_row(run_id).state == S.RUN_STATE_FINISHED:
                log.info("launch abandoned: the run was stopped while starting", run_id=run_id, error=str(err))
                return
            log.exception("run launch failed", run_id=run_id)
            reason = str(err)  # InvalidArgument: "field: message"
            await self.finish(run_id, S.RUN_OUTCOME_FAILED, f"launch failed: {reason}")

    async def _start_superlink(self, run_id: str, workdir: Path) -> SuperLinkHandle:
        handle = await self._launcher.start(run_id, workdir)
        self._links[run_id] = handle
        run = self.get_run_row(run_id)
        if run.state == S.RUN_STATE_FINISHED:  # stopped while its SuperLink started
            self._links.pop(run_id, None)
            await self._launcher.stop(handle)
            _raise_if_finished(run)
        return handle

    async def _prepare_app(self, run_id: str, task_id: str, app: dict[str, Any], strategy: dict[str, Any],
                           run_config: dict[str, Any], resume: str, workdir: Path,
                           node_count: int) -> tuple[Path, dict[str, Any]]:
        """Fetch the task's app, bundle it with our wrappers; returns the bundle and the run-config overrides."""
        source = await asyncio.to_thread(bundle.fetch_app, app, workdir)
        credential_file = ""
        if self._tokens is not None:  # the run's apps report with a token valid for this run only
            secret, _ = self._tokens.issue(access_pb2.TOKEN_KIND_RUN, access_pb2.ROLE_RUN, f"run {run_id}",
                                           subject=run_id, created_by="fedops-control")
            write_secret(workdir / "run.token", secret)
            credential_file = str((workdir / "run.token").resolve())
        fedops_config = {
            "fedops-run-id": run_id, "fedops-task-id": task_id, KEY_CONTROL: self._control_address,
            KEY_CREDENTIAL_FILE: credential_file, **self._control_tls,
            "fedops-round-timeout": float(strategy["round_timeout_s"]),
            "fedops-quorum": int(strategy["min_clients"]), "fedops-node-count": node_count,
            "fedops-resume-model-id": resume,
        }
        app_dir = workdir / "app"
        app_config = await asyncio.to_thread(bundle.build_bundle, source, app_dir, fedops_config)
        unknown = sorted(set(run_config) - set(app_config))
        if unknown and "local_path" not in app:
            raise InvalidArgument(f"hyperparameters.{unknown[0]}", "not a key of the app's run config")
        return app_dir, {k: _coerce(v, app_config[k]) for k, v in run_config.items() if k in app_config}

    # ---------------------------------------------------------------- stop / finish
    async def stop_run(self, run_id: str, hard: bool) -> RunRow:
        """Cooperative: finish the current round, then stop. Hard: stop every process now."""
        run = self.get_run_row(run_id)
        if run.state == S.RUN_STATE_FINISHED:
            raise FailedPrecondition(f"run {run_id} already finished")
        if hard or run.state != S.RUN_STATE_RUNNING:
            with self._sessions.begin() as db:
                db.get(RunRow, run_id).stop_requested = "hard"
            handle = self._links.get(run_id)
            if handle is not None and run.flower_run_id:
                try:
                    await flower_control.stop_run(handle, run.flower_run_id)
                except Exception as err:  # the SuperLink is killed next anyway
                    log.warning("flwr stop failed", run_id=run_id, error=str(err))
            await self.finish(run_id, S.RUN_OUTCOME_STOPPED, "stopped by operator (hard)")
        else:
            with self._sessions.begin() as db:
                db.get(RunRow, run_id).stop_requested = "cooperative"
            await self._bus.publish(run_id, "stop_requested", "stop requested: finishing the current round")
        return self.get_run_row(run_id)

    async def finish(self, run_id: str, outcome: int, reason: str) -> None:
        """Mark the run finished, stop its SuperNodes and SuperLink. Idempotent."""
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
                        if client.state != S.CLIENT_STATE_FAILED:
                            client.state = S.CLIENT_STATE_FINISHED if outcome == S.RUN_OUTCOME_COMPLETED else S.CLIENT_STATE_ONLINE
                            client.state_reason = f"run {run_id} {common_pb2.RunOutcome.Name(outcome).split('_')[-1].lower()}"
                for round_row in db.query(RoundRow).filter(RoundRow.run_id == run_id, RoundRow.finished_at.is_(None)):
                    round_row.phase, round_row.finished_at = "failed" if outcome != S.RUN_OUTCOME_COMPLETED else "done", utcnow()
            for cid in client_ids:
                self._agents.send(cid, agent_pb2.AgentCommand(stop_training=agent_pb2.StopTraining(
                    run_id=run_id, hard=outcome != S.RUN_OUTCOME_COMPLETED)))
            handle = self._links.pop(run_id, None)
            if handle is not None:
                await self._launcher.stop(handle)
            if self._tokens is not None:  # the run's apps are gone: their token must not outlive them
                self._tokens.revoke_subject(access_pb2.TOKEN_KIND_RUN, run_id)
            name = common_pb2.RunOutcome.Name(outcome).split("_")[-1].lower()
            metrics.RUNS_FINISHED.labels(task_id, name).inc()
            for status in ("selected", "responded", "failed", "straggling"):
                try:
                    metrics.ROUND_CLIENTS.remove(run_id, task_id, status)
                except KeyError:
                    pass
            await self._bus.publish(run_id, "run_finished", f"run {name}: {reason}", data={"outcome": name})
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

    def _client_of(self, run: RunRow, node_id: int) -> str:
        return run.node_clients.get(str(node_id), "")

    async def on_server_event(self, event: agent_pb2.ServerEvent) -> bool:
        """Apply a ServerApp-side report; returns whether a cooperative stop is requested."""
        run = self.get_run_row(event.run_id)
        self._last_report[run.id] = asyncio.get_running_loop().time()
        kind, number = event.kind, event.round
        publish: list[tuple[str, str, int, str, dict[str, Any]]] = []
        docs: list[dict[str, Any]] = []  # round-metrics telemetry documents
        notices: list[tuple[str, agent_pb2.AgentCommand]] = []
        with self._sessions.begin() as db:
            run = db.get(RunRow, event.run_id)
            task_id = run.task_id
            round_row = db.get(RoundRow, (run.id, number)) if number else None

            def doc(scope: str, phase: str = "", client_id: str = "", values: Any = None, **extra: Any) -> None:
                docs.append({"metric.scope": scope, "fedops.run.id": run.id, "fedops.task.id": task_id,
                             "fedops.round": number, "fedops.phase": phase, "fedops.client.id": client_id,
                             "metrics": dict(values or {}), **extra})

            if kind == "initial_evaluation":
                run.initial_central_metrics = dict(event.metrics)
                doc("central", values=event.metrics, message="initial global model evaluated")
                publish.append(("central_evaluation", "initial global model evaluated", 0, "", dict(event.metrics)))
            elif kind == "phase_started":
                clients = [self._client_of(run, n) or f"node:{n}" for n in event.node_ids]
                if round_row is None:
                    round_row = RoundRow(run_id=run.id, number=number, started_at=utcnow(), selected=[], responded=[],
                                         failed=[], train_metrics={}, evaluate_metrics={}, central_metrics={})
                    db.add(round_row)
                    notice = self._round_notice(db, run, number)
                    notices += [(cid, notice) for cid in clients]
                if event.phase == "train" or not round_row.selected:
                    round_row.selected = sorted(set(round_row.selected) | set(clients))
                round_row.phase, round_row.phase_started_at = event.phase, utcnow()
                round_row.phase_timeout_s, round_row.phase_expected, round_row.phase_received = event.timeout_s, clients, []
                run.current_round = max(run.current_round, number)
                publish.append(("round_phase", f"round {number} {event.phase}: sent to {len(clients)} clients",
                                number, "", {"phase": event.phase, "clients": clients}))
                for outcome in ("ok", "failed"):  # export 0 before the first failure: rates and alerts see it
                    metrics.CLIENT_OUTCOMES.labels(task_id, event.phase, outcome)
                metrics.ROUND_CLIENTS.labels(run.id, task_id, "selected").set(len(round_row.selected))
                metrics.ROUND_CLIENTS.labels(run.id, task_id, "straggling").set(len(clients))
                if event.phase == "train":
                    metrics.ROUND_CLIENTS.labels(run.id, task_id, "responded").set(0)
                    metrics.ROUND_CLIENTS.labels(run.id, task_id, "failed").set(0)
            elif kind == "replies" and round_row is not None:
                for result in event.results:
                    cid = self._client_of(run, result.node_id) or f"node:{result.node_id}"
                    round_row.phase_received = [*round_row.phase_received, cid]
                    metrics.CLIENT_BYTES.labels(cid, "sent").inc(result.bytes_sent)
                    metrics.CLIENT_BYTES.labels(cid, "received").inc(result.bytes_received)
                    metrics.CLIENT_OUTCOMES.labels(task_id, result.phase, "failed" if result.error else "ok").inc()
                    doc("client", result.phase, cid, result.metrics, **{
                        "fedops.flower.node_id": str(result.node_id), "fedops.bytes_sent": result.bytes_sent,
                        "fedops.bytes_received": result.bytes_received, "error.message": result.error or None})
                    if result.error:
                        round_row.failed = sorted(set(round_row.failed) | {cid})
                        db.add(ClientResultRow(run_id=run.id, round=number, phase=result.phase, client_id=cid,
                                               node_id=str(result.node_id), error=result.error))
                        self._mark_client_failed(db, cid, run.id, f"round {number} {result.phase}: {result.error}")
                        metrics.CLIENT_FAILURES.labels(cid).inc()
                        publish.append(("client_failed", f"{cid} failed round {number} {result.phase}: {result.error}",
                                        number, cid, {}))
                    else:
                        round_row.responded = sorted(set(round_row.responded) | {cid})
                metrics.ROUND_CLIENTS.labels(run.id, task_id, "responded").set(len(round_row.responded))
                metrics.ROUND_CLIENTS.labels(run.id, task_id, "failed").set(len(round_row.failed))
                metrics.ROUND_CLIENTS.labels(run.id, task_id, "straggling").set(
                    len(set(round_row.phase_expected) - set(round_row.phase_received)))
            elif kind == "phase_finished" and round_row is not None:
                for node_id in event.node_ids:
                    cid = self._client_of(run, node_id) or f"node:{node_id}"
                    round_row.failed = sorted(set(round_row.failed) | {cid})
                    reason = f"no reply in round {number} {event.phase} within {round_row.phase_timeout_s:.0f}s"
                    db.add(ClientResultRow(run_id=run.id, round=number, phase=event.phase, client_id=cid,
                                           node_id=str(node_id), error=reason))
                    self._mark_client_failed(db, cid, run.id, reason)
                    metrics.CLIENT_FAILURES.labels(cid).inc()
                    metrics.CLIENT_OUTCOMES.labels(task_id, event.phase, "failed").inc()
                    publish.append(("client_failed", f"{cid}: {reason}", number, cid, {}))
                if round_row.phase_started_at is not None:
                    metrics.PHASE_DURATION.labels(event.phase).observe(
                        (utcnow() - round_row.phase_started_at).total_seconds())
                metrics.ROUND_CLIENTS.labels(run.id, task_id, "failed").set(len(round_row.failed))
                metrics.ROUND_CLIENTS.labels(run.id, task_id, "straggling").set(0)
                round_row.phase_expected, round_row.phase_received = [], []
                publish.append(("phase_finished", f"round {number} {event.phase}: {event.message}", number, "", {}))
            elif kind == "aggregated" and round_row is not None:
                if event.phase == "train":
                    round_row.train_metrics = dict(event.metrics)
                else:
                    round_row.evaluate_metrics = dict(event.metrics)
                doc("aggregated", event.phase, values=event.metrics)
                publish.append(("aggregated", f"round {number} {event.phase} metrics aggregated", number, "",
                                {"phase": event.phase, "metrics": dict(event.metrics)}))
            elif kind == "round_finished" and round_row is not None:
                round_row.central_metrics = dict(event.metrics) or round_row.central_metrics
                round_row.phase, round_row.finished_at = "done", utcnow()
                metrics.ROUNDS_COMPLETED.labels(task_id).inc()
                metrics.ROUND_DURATION.labels(task_id).observe((round_row.finished_at - round_row.started_at).total_seconds())
                doc("central", values=round_row.central_metrics, **{
                    "fedops.clients.responded": list(round_row.responded), "fedops.clients.failed": list(round_row.failed)})
                publish.append(("round_finished", f"round {number}/{run.total_rounds} finished", number, "",
                                {"central": dict(round_row.central_metrics), "train": dict(round_row.train_metrics),
                                 "evaluate": dict(round_row.evaluate_metrics), "responded": list(round_row.responded),
                                 "failed": list(round_row.failed)}))
            elif kind == "app_started":
                publish.append(("app_started", "ServerApp started", 0, "", {}))
            stop_requested = run.stop_requested == "cooperative"
            stopped = run.stop_requested != ""
        for cid, notice in notices:  # agents tag their telemetry with the round and report data status
            self._agents.send(cid, notice)
        if self._writer is not None:
            for document in docs:
                self._writer.write("round-metrics", document)
        for kind_, message, rnd, cid, data in publish:
            await self._bus.publish(event.run_id, kind_, message, round=rnd, client_id=cid, data=data)
        if kind == "app_finished":
            self._spawn(self._finish_after_flower(
                event.run_id, S.RUN_OUTCOME_STOPPED if stopped else S.RUN_OUTCOME_COMPLETED, event.message or "completed"))
        elif kind == "app_failed":
            self._spawn(self._finish_after_flower(event.run_id, S.RUN_OUTCOME_FAILED, event.message))
        return stop_requested

    async def _finish_after_flower(self, run_id: str, outcome: int, reason: str) -> None:
        """The ServerApp reported its end: answer it at once, let it hand its result to the SuperLink
        and exit, then finish. Stopping the SuperLink first would leave it retrying against a dead port."""
        handle, flower_run_id = self._links.get(run_id), self.get_run_row(run_id).flower_run_id
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
                    break
                await asyncio.sleep(0.2)
        await self.finish(run_id, outcome, reason)

    def _round_notice(self, db: Session, run: RunRow, number: int) -> agent_pb2.AgentCommand:
        """The RoundStarted command: which global model version round ``number`` trains from."""
        previous = (db.query(ModelRow).filter(ModelRow.run_id == run.id, ModelRow.round < number)
                    .order_by(ModelRow.round.desc()).first())
        if previous is None and run.resumed_from_model_id:
            previous = db.get(ModelRow, run.resumed_from_model_id)
        return agent_pb2.AgentCommand(round_started=agent_pb2.RoundStarted(
            run_id=run.id, round=number, model_version=previous.version if previous else 0,
            model_id=previous.id if previous else ""))

    def _mark_client_failed(self, db: Session, client_id: str, run_id: str, reason: str) -> None:
        client = db.get(ClientRow, client_id)
        if client is not None:
            client.state, client.state_reason = S.CLIENT_STATE_FAILED, reason

    async def on_client_event(self, event: agent_pb2.ClientEvent) -> None:
        """Apply a ClientApp-side report: node id mapping and per-client metrics."""
        with self._sessions.begin() as db:
            run = db.get(RunRow, event.run_id)
            if run is None:
                raise NotFound(f"run {event.run_id} not found")
            if event.client_id not in run.client_ids:
                raise InvalidArgument("client_id", f"{event.client_id!r} is not a participant of {run.id}")
            run.node_clients = {**run.node_clients, str(event.node_id): event.client_id}
            # A ClientApp learns its round only from the group id, which not every strategy sets.
            event.round = event.round or run.current_round
            db.add(ClientResultRow(run_id=run.id, round=event.round, phase=event.phase, client_id=event.client_id,
                                   node_id=str(event.node_id), metrics=dict(event.metrics),
                                   duration_s=event.duration_s, error=event.error))
        if self._writer is not None:
            self._writer.write("round-metrics", {
                "metric.scope": "client-local", "fedops.run.id": event.run_id, "fedops.round": event.round,
                "fedops.phase": event.phase, "fedops.client.id": event.client_id,
                "fedops.flower.node_id": str(event.node_id), "fedops.duration_s": event.duration_s,
                "metrics": dict(event.metrics), "error.message": event.error or None})
        text = (f"{event.client_id} {event.phase} round {event.round}: "
                + (f"error {event.error}" if event.error else ", ".join(f"{k}={v:.4g}" for k, v in event.metrics.items())))
        await self._bus.publish(event.run_id, "client_result", text, round=event.round, client_id=event.client_id,
                                data={"phase": event.phase, "metrics": dict(event.metrics),
                                      "duration_s": event.duration_s, "error": event.error})

    async def on_model_stored(self, run_id: str, model_id: str, version: int, round_number: int) -> None:
        """Announce a stored global model."""
        await self._bus.publish(run_id, "model_stored", f"global model v{version} stored ({model_id})",
                                round=round_number, data={"model_id": model_id, "version": version})

    async def on_agent_lost(self, client_id: str) -> None:
        """An agent's session ended: offline, or failed when it was in an active run."""
        if self._closing:
            return
        run_id = ""
        with self._sessions.begin() as db:
            client = db.get(ClientRow, client_id)
            if client is None:
                return
            run = db.get(RunRow, client.current_run_id) if client.current_run_id else None
            if run is not None and run.state in ACTIVE_STATES:
                run_id = run.id
                client.state, client.state_reason = S.CLIENT_STATE_FAILED, f"agent disconnected during run {run.id}"
            else:
                client.state, client.state_reason = S.CLIENT_STATE_OFFLINE, "agent disconnected"
        if run_id:
            metrics.CLIENT_FAILURES.labels(client_id).inc()
            await self._bus.publish(run_id, "client_failed", f"{client_id}: agent disconnected", client_id=client_id)
        await self._bus.notify()

    async def on_training_report(self, client_id: str, report: agent_pb2.TrainingReport) -> None:
        """The agent's SuperNode for a run exited."""
        with self._sessions.begin() as db:
            run = db.get(RunRow, report.run_id)
            active = run is not None and run.state in ACTIVE_STATES
            client = db.get(ClientRow, client_id)
            if active and not report.succeeded and client is not None:
                client.state, client.state_reason = S.CLIENT_STATE_FAILED, report.reason
        if active and not report.succeeded:
            metrics.CLIENT_FAILURES.labels(client_id).inc()
            await self._bus.publish(report.run_id, "client_failed", f"{client_id}: {report.reason}", client_id=client_id)

    # ---------------------------------------------------------------- watchdog
    async def watchdog(self, interval_s: float = 2.0) -> None:
        """Catch runs whose ServerApp died without reporting (checked with the Control API, as `flwr ls` does)."""
        while True:
            await asyncio.sleep(interval_s)
            now = asyncio.get_running_loop().time()
            for run_id, handle in list(self._links.items()):
                try:
                    run = self.get_run_row(run_id)
                    if run.state != S.RUN_STATE_RUNNING:
                        continue
                    exited = (handle.process.poll() is not None if handle.process is not None
                              else not pid_alive(int(handle.extra.get("pid", 0))))
                    if exited:
                        await self.finish(run_id, S.RUN_OUTCOME_FAILED, "SuperLink process exited")
                        continue
                    if now - self._last_report.get(run_id, now) < SILENCE_BEFORE_STATUS_CHECK_S:
                        continue
                    self._last_report[run_id] = now
                    status = flower_control.status_text(await flower_control.get_run(handle, run.flower_run_id))
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
            for run_id in list(self._links):
                await self.finish(run_id, S.RUN_OUTCOME_FAILED, "control service shut down")
        elif self._links:
            log.info("leaving active runs to the next start of the control service", runs=sorted(self._links))
        self._links.clear()

    async def recover(self) -> None:
        """After a restart: re-attach running runs to their SuperLinks; fail those that cannot go on."""
        with self._sessions() as db:
            active = [(r.id, r.state, r.superlink_address, r.flower_run_id)
                      for r in db.query(RunRow).filter(RunRow.state.in_(ACTIVE_STATES))]
        for run_id, state, address, flower_run_id in active:
            handle = None
            if state == S.RUN_STATE_RUNNING and address and flower_run_id:
                handle = self._launcher.adopt(run_id, self._data_dir / "runs" / run_id, address)
            if handle is None:
                await self.finish(run_id, S.RUN_OUTCOME_FAILED, "control service restarted while the run was "
                                  + ("starting" if state != S.RUN_STATE_RUNNING else "running and its SuperLink is gone"))
                continue
            self._links[run_id] = handle
            self._last_report[run_id] = asyncio.get_running_loop().time()
            await self._bus.publish(run_id, "control_restarted",
                                    "control service restarted; run re-attached to its SuperLink")


def _raise_if_finished(run: RunRow) -> None:
    """A launch step refuses a run that was stopped (finished) while it was starting."""
    if run.state == S.RUN_STATE_FINISHED:
        raise FailedPrecondition(f"run {run.id} was stopped while starting")


def _toml_literal(value: Any) -> str:
    """A node-config value as the TOML literal `flower-supernode --node-config` expects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))
