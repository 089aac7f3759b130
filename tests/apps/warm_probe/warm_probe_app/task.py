"""Synthetic data and a numpy logistic regression model."""

import numpy as np

NUM_FEATURES = 8
SEED = 42
NUM_TRAIN = 160
NUM_TEST = 40
NUM_CENTRAL = 200


def _true_model() -> tuple[np.ndarray, float]:
    """The fixed linear model that labels every synthetic sample."""
    rng = np.random.default_rng(SEED)
    return rng.normal(size=NUM_FEATURES), 0.25


def _make_data(seed: int, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_rows`` samples (features, 0/1 labels) with a little label noise."""
    w, b = _true_model()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_rows, NUM_FEATURES))
    logits = x @ w + b + rng.normal(scale=0.5, size=num_rows)
    y = (logits > 0).astype(np.float64)
    return x, y


def load_data(partition_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test) of a partition (deterministic)."""
    x, y = _make_data(SEED + 1 + int(partition_id), NUM_TRAIN + NUM_TEST)
    return x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:]


def load_centralized_data() -> tuple[np.ndarray, np.ndarray]:
    """A held-out set for the server's centralized evaluation."""
    return _make_data(SEED + 10_000, NUM_CENTRAL)


def get_initial_params() -> list[np.ndarray]:
    """Model parameters: [weights (NUM_FEATURES,), bias (1,)], all zeros."""
    return [np.zeros(NUM_FEATURES), np.zeros(1)]


def _predict_proba(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    w, b = params
    return 1.0 / (1.0 + np.exp(-(x @ w + b[0])))


def _loss_and_accuracy(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p = np.clip(_predict_proba(params, x), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    accuracy = float(np.mean((p > 0.5) == (y > 0.5)))
    return loss, accuracy


def train(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int, lr: float
          ) -> tuple[list[np.ndarray], float, float]:
    """Full-batch gradient descent; return (new params, train loss, train accuracy)."""
    w, b = params[0].copy(), params[1].copy()
    for _ in range(epochs):
        error = _predict_proba([w, b], x) - y
        w -= lr * (x.T @ error) / len(y)
        b -= lr * np.array([error.mean()])
    loss, accuracy = _loss_and_accuracy([w, b], x, y)
    return [w, b], loss, accuracy


def test(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float, list[float]]:
    """Return (loss, accuracy, [accuracy on class 0, accuracy on class 1]) on the given data."""
    loss, accuracy = _loss_and_accuracy(params, x, y)
    return loss, accuracy, class_accuracy(params, x, y)


def class_accuracy(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[float]:
    """Accuracy on the samples of each class (0.0 for a class without samples)."""
    correct = (_predict_proba(params, x) > 0.5) == (y > 0.5)
    return [float(correct[y == label].mean()) if np.any(y == label) else 0.0 for label in (0, 1)]
