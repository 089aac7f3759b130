"""Data status: aggregates of npz and csv data, never rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedops_agent.datastatus import compute_data_status


def test_npz_partition(digits_data: list[Path]) -> None:
    status = compute_data_status(str(digits_data[0]))
    with np.load(digits_data[0] / "data.npz") as npz:
        labels = np.concatenate([npz["y_train"], npz["y_test"]])
        features = np.concatenate([npz["x_train"], npz["x_test"]])
    assert status["sample_count"] == len(labels) and status["feature_count"] == 64
    values, counts = np.unique(labels, return_counts=True)
    assert status["label_histogram"] == {str(k): int(v) for k, v in zip(values, counts, strict=True)}
    assert status["missing_ratio"] == 0.0
    assert status["features"][10]["mean"] == round(float(features[:, 10].mean()), 6)
    assert status["freshness_s"] >= 0 and status["newest_file_at"].endswith("Z")
    # Only aggregates: no list in the report is as long as the data.
    assert all(len(v) < len(labels) for v in status.values() if isinstance(v, list))
    assert compute_data_status(str(digits_data[1]))["schema_hash"] == status["schema_hash"]


def test_csv_with_missing_values_and_schema_change(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("age,score,label\n30,1.5,yes\n,2.5,no\n50,,yes\n", encoding="utf-8")
    status = compute_data_status(str(tmp_path))
    assert status["sample_count"] == 3 and status["feature_count"] == 2
    assert status["label_histogram"] == {"no": 1, "yes": 2}
    assert status["features"][0]["missing_ratio"] == 1 / 3 and status["features"][0]["mean"] == 40.0
    assert abs(status["missing_ratio"] - 2 / 6) < 1e-9
    (tmp_path / "a.csv").write_text("age,income,label\n1,2,x\n", encoding="utf-8")
    assert compute_data_status(str(tmp_path))["schema_hash"] != status["schema_hash"]
    # Aggregates only: one entry per feature, and nothing shaped like the rows.
    assert len(status["features"]) == status["feature_count"]
    assert all(len(v) != status["sample_count"] for v in status.values() if isinstance(v, list))


def test_missing_data_is_reported_not_raised(tmp_path: Path) -> None:
    status = compute_data_status(str(tmp_path / "nowhere"))
    assert status["sample_count"] == 0 and "no .npz or .csv data" in status["errors"][0]
    assert compute_data_status("")["data_path_set"] is False
