"""Privacy-safe data status of a client's local data: aggregates only, no row ever leaves.

Reads the files under the agent's data path that it understands:
  * ``.npz``: feature arrays are the keys starting with ``x``/``features``, labels the keys
    starting with ``y``/``label``/``target`` (e.g. ``x_train, y_train, x_test, y_test``);
  * ``.csv`` with a header: the label column is ``label``, ``target``, ``y`` or ``class``
    (else the last column); empty cells and ``NaN`` count as missing.
Reports sample count, label histogram, per-feature missing ratio and mean/std/min/max,
a schema hash (feature names, dtypes, shapes) and freshness (age of the newest file).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURE_PREFIXES = ("x", "features")
LABEL_PREFIXES = ("y", "label", "target")
CSV_LABELS = ("label", "target", "y", "class")
MAX_FEATURES_LISTED = 256
MAX_FILES = 64


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in sorted(path.rglob("*")) if p.suffix in (".npz", ".csv") and p.is_file()]
        return found[:MAX_FILES]
    return []


def _load_npz(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    features, labels, schema = [], [], []
    with np.load(path, allow_pickle=False) as npz:
        for key in sorted(npz.files):
            low = key.lower()
            array = npz[key]
            if low.startswith(LABEL_PREFIXES):
                labels.append(array.reshape(-1))
                schema.append(f"label:{array.dtype}")
            elif low.startswith(FEATURE_PREFIXES):
                features.append(array.reshape(array.shape[0], -1).astype(np.float64))
                schema.append(f"features:{array.dtype}:{array.shape[1:]}")
    return features, labels, schema


def _load_csv(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return [], [], []
    header, body = rows[0], rows[1:]
    lower = [h.strip().lower() for h in header]
    label_col = next((lower.index(name) for name in CSV_LABELS if name in lower), len(header) - 1)
    feature_cols = [i for i in range(len(header)) if i != label_col]

    def number(cell: str) -> float:
        try:
            return float(cell) if cell.strip() else np.nan
        except ValueError:
            return np.nan

    matrix = np.array([[number(row[i]) if i < len(row) else np.nan for i in feature_cols] for row in body],
                      dtype=np.float64).reshape(len(body), len(feature_cols))
    labels = np.array([row[label_col].strip() if label_col < len(row) else "" for row in body])
    schema = [f"csv:{','.join(header[i] for i in feature_cols)}|label:{header[label_col]}"]
    return [matrix], [labels], schema


def compute_data_status(data_path: str) -> dict[str, Any]:
    """Aggregates of the data under ``data_path`` (never rows). An unreadable path is reported, not raised."""
    path = Path(data_path) if data_path else None
    files = _data_files(path) if path else []
    status: dict[str, Any] = {"data_path_set": bool(data_path), "file_count": len(files), "sample_count": 0,
                              "label_histogram": {}, "feature_count": 0, "features": [], "schema_hash": "",
                              "missing_ratio": 0.0, "freshness_s": -1.0, "newest_file_at": None, "errors": []}
    if not files:
        if data_path:
            status["errors"].append(f"no .npz or .csv data found at {data_path}")
        return status
    features: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    schema: list[str] = []
    for file in files:
        try:
            f, lab, sch = _load_npz(file) if file.suffix == ".npz" else _load_csv(file)
        except (OSError, ValueError) as err:
            status["errors"].append(f"{file.name}: {type(err).__name__}: {err}"[:300])
            continue
        features += f
        labels += lab
        schema += sch
    newest = max(file.stat().st_mtime for file in files)
    status["freshness_s"] = round(time.time() - newest, 3)
    status["newest_file_at"] = dt.datetime.fromtimestamp(newest, dt.UTC).isoformat().replace("+00:00", "Z")
    status["schema_hash"] = hashlib.sha256(json.dumps(sorted(set(schema))).encode()).hexdigest()[:16]
    widths = {f.shape[1] for f in features}
    if features and len(widths) == 1:
        matrix = np.concatenate(features)
        status["sample_count"] = int(matrix.shape[0])
        status["feature_count"] = int(matrix.shape[1])
        missing = np.isnan(matrix)
        status["missing_ratio"] = float(missing.mean()) if matrix.size else 0.0
        with np.errstate(all="ignore"):
            stats = {"mean": np.nanmean(matrix, axis=0), "std": np.nanstd(matrix, axis=0),
                     "min": np.nanmin(matrix, axis=0), "max": np.nanmax(matrix, axis=0)}
        for index in range(min(matrix.shape[1], MAX_FEATURES_LISTED)):
            entry: dict[str, float | int | None] = {
                "index": index, "missing_ratio": float(missing[:, index].mean()) if matrix.shape[0] else 0.0}
            for name, values in stats.items():
                value = float(values[index])
                entry[name] = None if np.isnan(value) else round(value, 6)
            status["features"].append(entry)
    elif features:
        status["errors"].append(f"feature arrays of different widths {sorted(widths)}")
    if labels:
        all_labels = np.concatenate([lab.astype(str) for lab in labels])
        values, counts = np.unique(all_labels, return_counts=True)
        status["label_histogram"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
        status["sample_count"] = status["sample_count"] or int(all_labels.shape[0])
    return status
