"""Model, data loading and the train/test loops of the digits app."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 2024
SERVER_TEST_FRACTION = 0.2


class Net(nn.Module):
    """A small MLP for 8x8 digits (64 inputs, 10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1797 8x8 images, values 0-16) as (data, target), never downloaded.

    The CSV shipped inside scikit-learn is read directly: importing scikit-learn (and SciPy) takes
    longer than everything else the ServerApp does before its first round.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    csv = Path(next(iter(spec.submodule_search_locations or []), "")) / "datasets" / "data" / "digits.csv.gz" \
        if spec is not None else None
    if csv is None or not csv.is_file():  # another layout: let scikit-learn find its file
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target
    table = np.loadtxt(csv, delimiter=",")
    return table[:, :-1], table[:, -1]


def split_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_pool, y_pool, x_server_test, y_server_test), scaled to [0, 1]."""
    data, target = load_digits_arrays()
    x = (data / 16.0).astype(np.float32)
    y = target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    n_test = int(len(y) * SERVER_TEST_FRACTION)
    test, pool = order[:n_test], order[n_test:]
    return x[pool], y[pool], x[test], y[test]


def write_partitions(out_dirs: list[Path], alpha: float = 0.5) -> list[dict[str, int]]:
    """Split the pool non-IID (Dirichlet label skew) and write one ``data.npz`` per dir.

    Each file holds ``x_train, y_train, x_test, y_test`` (an 80/20 local split).
    Returns each partition's label histogram.
    """
    x, y, _, _ = split_digits()
    rng = np.random.default_rng(SEED)
    parts: list[list[int]] = [[] for _ in out_dirs]
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet([alpha] * len(out_dirs))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            part.extend(chunk.tolist())
    histograms = []
    for out_dir, part in zip(out_dirs, parts, strict=True):
        idx = rng.permutation(np.array(part, dtype=np.int64))
        n_test = max(1, len(idx) // 5)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(
            out_dir / "data.npz",
            x_train=x[idx[n_test:]], y_train=y[idx[n_test:]],
            x_test=x[idx[:n_test]], y_test=y[idx[:n_test]],
        )
        histograms.append({str(k): int(v) for k, v in zip(*np.unique(y[idx], return_counts=True), strict=True)})
    return histograms


def load_local_data(data_path: str) -> tuple[np.ndarray, ...]:
    """Load a client's ``data.npz`` (a file or a directory holding one)."""
    path = Path(data_path)
    if path.is_dir():
        path = path / "data.npz"
    with np.load(path) as data:
        return data["x_train"], data["y_train"], data["x_test"], data["y_test"]


def train(net: Net, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch_size: int) -> float:
    """Train with SGD and return the mean training loss of the last epoch."""
    torch.manual_seed(SEED)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    last = 0.0
    for _ in range(epochs):
        total, count = 0.0, 0
        for start in range(0, len(yt), batch_size):
            xb, yb = xt[start : start + batch_size], yt[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(yb)
            count += len(yb)
        last = total / max(count, 1)
    return last


def test(net: Net, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return (loss, accuracy) on the given data."""
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
        loss = float(nn.CrossEntropyLoss()(logits, torch.from_numpy(y)))
        accuracy = float((logits.argmax(1).numpy() == y).mean())
    return loss, accuracy
