"""legacy-workflow-app: a Flower ClientApp built from a NumPyClient."""

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from legacy_workflow_app.task import get_initial_params, load_data, test, train


class FlowerClient(NumPyClient):
    """Logistic regression on the node's synthetic partition."""

    def __init__(self, partition_id: int, local_epochs: int, lr: float) -> None:
        self.x_train, self.y_train, self.x_test, self.y_test = load_data(partition_id)
        self.local_epochs = local_epochs
        self.lr = lr

    def get_parameters(self, config):
        """Return the initial model parameters (asked once by the server)."""
        return get_initial_params()

    def fit(self, parameters, config):
        """Train the received model on local data."""
        new_params, _, train_acc = train(parameters, self.x_train, self.y_train, self.local_epochs, self.lr)
        return new_params, len(self.y_train), {"accuracy": train_acc}

    def evaluate(self, parameters, config):
        """Evaluate the received model on local held-out data."""
        loss, accuracy = test(parameters, self.x_test, self.y_test)
        return loss, len(self.y_test), {"accuracy": accuracy}


def client_fn(context: Context):
    """Construct a Client that will be run in a ClientApp."""
    partition_id = int(context.node_config.get("partition-id", 0))
    local_epochs = int(context.run_config["local-epochs"])
    lr = float(context.run_config["lr"])
    return FlowerClient(partition_id, local_epochs, lr).to_client()


# Flower ClientApp
app = ClientApp(client_fn=client_fn)
