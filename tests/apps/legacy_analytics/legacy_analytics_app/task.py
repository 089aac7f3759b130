"""Synthetic, deterministic per-partition data for the analytics app."""

import numpy as np

SEED = 42


def load_data(partition_id: int) -> np.ndarray:
    """A partition's values: 100-300 samples around a partition-specific mean."""
    rng = np.random.default_rng(SEED + int(partition_id))
    num_rows = 100 + 100 * (int(partition_id) % 3)
    return rng.normal(loc=10.0 + int(partition_id), scale=2.0, size=num_rows)
