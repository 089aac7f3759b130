"""sklearn-logreg-app: a Flower / scikit-learn ClientApp (NumPyClient)."""

import warnings

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context
from sklearn.metrics import log_loss

from sklearn_logreg_app.task import get_model, get_model_params, load_data, set_initial_params, set_model_params


class FlowerClient(NumPyClient):
    def __init__(self, model, x_train, y_train, x_test, y_test):
        self.model = model
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test

    def fit(self, parameters, config):
        set_model_params(self.model, parameters)
        with warnings.catch_warnings():  # max_iter is the local epochs: it does not converge on purpose
            warnings.simplefilter("ignore")
            self.model.fit(self.x_train, self.y_train)
        return get_model_params(self.model), len(self.x_train), {}

    def evaluate(self, parameters, config):
        set_model_params(self.model, parameters)
        loss = log_loss(self.y_test, self.model.predict_proba(self.x_test), labels=list(range(10)))
        accuracy = self.model.score(self.x_test, self.y_test)
        return loss, len(self.x_test), {"accuracy": accuracy}


def client_fn(context: Context):
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", 2))
    x_train, y_train, x_test, y_test = load_data(partition_id, num_partitions)
    model = get_model(str(context.run_config["penalty"]), int(context.run_config["local-epochs"]))
    set_initial_params(model)
    return FlowerClient(model, x_train, y_train, x_test, y_test).to_client()


app = ClientApp(client_fn=client_fn)
