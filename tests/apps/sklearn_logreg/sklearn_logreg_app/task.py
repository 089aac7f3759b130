"""sklearn-logreg-app: the model and the data (scikit-learn's bundled digits: nothing is downloaded)."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

N_CLASSES = 10
N_FEATURES = 64


def load_data(partition_id: int, num_partitions: int):
    """This client's share of the digits, split 80/20 into train and test."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x, y = x[partition_id::num_partitions], y[partition_id::num_partitions]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def get_model(penalty: str, local_epochs: int) -> LogisticRegression:
    return LogisticRegression(penalty=penalty, max_iter=local_epochs, warm_start=True)


def get_model_params(model: LogisticRegression) -> list[np.ndarray]:
    return [model.coef_, model.intercept_]


def set_model_params(model: LogisticRegression, params: list[np.ndarray]) -> LogisticRegression:
    model.coef_, model.intercept_ = params[0], params[1]
    return model


def set_initial_params(model: LogisticRegression) -> None:
    """Zeros, so that the server can send parameters before any client has fitted."""
    model.classes_ = np.arange(N_CLASSES)
    model.coef_ = np.zeros((N_CLASSES, N_FEATURES))
    model.intercept_ = np.zeros((N_CLASSES,))
