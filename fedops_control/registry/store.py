"""Store global models on disk with their lineage in the database."""

from __future__ import annotations

import builtins
import hashlib
import uuid
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.orm import Session, sessionmaker

from fedops_common import metricvalues
from fedops_control.errors import InvalidArgument, NotFound
from fedops_control.state.models import ClientResultRow, ModelRow, RoundRow, RunRow
from fedops_control.task.strategy import StrategySpec


def client_means(rows: list[ClientResultRow]) -> dict[str, float]:
    """``client.<phase>.<metric>``: the mean over the round's clients that succeeded (scalars only)."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        if row.error:
            continue
        for name, value in metricvalues.scalars(row.metrics).items():
            sums.setdefault(f"client.{row.phase}.{name}", []).append(value)
    return {name: sum(values) / len(values) for name, values in sums.items()}


class ModelStore:
    """Global model versions: files under ``root``, lineage rows in the DB."""

    def __init__(self, sessions: sessionmaker[Session], root: Path) -> None:
        self._sessions = sessions
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, run_id: str, round_number: int, data: bytes, metrics: dict[str, metricvalues.Value],
            fmt: str) -> ModelRow:
        """Store the global model of a run's round; version numbers increase per task."""
        with self._sessions.begin() as db:
            run = db.get(RunRow, run_id)
            if run is None:
                raise NotFound(f"run {run_id} not found")
            round_row = db.get(RoundRow, (run_id, round_number))
            results = db.query(ClientResultRow).filter(ClientResultRow.run_id == run_id,
                                                       ClientResultRow.round == round_number).all()
            # The clients whose training went into this model; a round without a train phase: who replied.
            trained = sorted({r.client_id for r in results if r.phase == "train" and not r.error})
            participants = trained or (list(round_row.responded) if round_row else [])
            merged = {**{f"central.{k}": v for k, v in metrics.items()}}
            if round_row:
                merged.update({f"train.{k}": v for k, v in round_row.train_metrics.items()})
                merged.update({f"evaluate.{k}": v for k, v in round_row.evaluate_metrics.items()})
            merged.update(client_means(results))
            version = (db.query(func.max(ModelRow.version)).filter(ModelRow.task_id == run.task_id).scalar() or 0) + 1
            parent = (db.query(ModelRow).filter(ModelRow.run_id == run_id).order_by(ModelRow.round.desc()).first())
            parent_id = parent.id if parent else run.resumed_from_model_id
            model_id = f"model-{uuid.uuid4().hex[:12]}"
            path = self.root / run.task_id / f"{model_id}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            row = ModelRow(id=model_id, task_id=run.task_id, run_id=run_id, round=round_number, version=version,
                           participants=participants, config_hash=run.config_hash, metrics=merged,
                           sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), format=fmt,
                           path=str(path), parent_id=parent_id or "")
            db.add(row)
            if round_row:
                round_row.model_version_id = model_id
                round_row.central_metrics = dict(metrics)
            return row

    def list(self, task_id: str = "", run_id: str = "") -> list[ModelRow]:
        """Versions, newest first."""
        with self._sessions() as db:
            query = db.query(ModelRow)
            if task_id:
                query = query.filter(ModelRow.task_id == task_id)
            if run_id:
                query = query.filter(ModelRow.run_id == run_id)
            return list(query.order_by(ModelRow.task_id, ModelRow.version.desc()).all())

    def resolve(self, model_id: str, task_id: str = "", strategy: StrategySpec | None = None) -> ModelRow:
        """A version by id, or ``latest``/``best`` of ``task_id``."""
        if model_id in ("latest", "best"):
            if not task_id:
                raise InvalidArgument("task_id", f"required with model_id={model_id!r}")
            versions = self.list(task_id=task_id)
            if not versions:
                raise NotFound(f"task {task_id} has no stored models")
            if model_id == "latest":
                return versions[0]
            strategy = strategy or StrategySpec()
            metric, lower = strategy.best_metric, strategy.best_metric_lower_is_better
            scored = [v for v in versions if isinstance(v.metrics.get(metric), (int, float))]
            if not scored:
                return versions[0]
            # On a tie the newest version wins, whichever the direction.
            if lower:
                return min(scored, key=lambda v: (v.metrics[metric], -v.version))
            return max(scored, key=lambda v: (v.metrics[metric], v.version))
        with self._sessions() as db:
            row = db.get(ModelRow, model_id)
        if row is None:
            raise NotFound(f"model {model_id} not found")
        return row

    def tags_for(self, row: ModelRow, strategy: StrategySpec) -> builtins.list[str]:  # list: the method above
        """"latest"/"best" labels of a version within its task."""
        tags = []
        if self.resolve("latest", row.task_id).id == row.id:
            tags.append("latest")
        if self.resolve("best", row.task_id, strategy).id == row.id:
            tags.append("best")
        return tags

    @staticmethod
    def read(row: ModelRow) -> bytes:
        """The stored bytes of a version."""
        return Path(row.path).read_bytes()
