"""legacy-analytics-app: a ClientApp that reports the mean of its local data (no model)."""

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from legacy_analytics_app.task import load_data


class FlowerClient(NumPyClient):
    """Computes local statistics; has no parameters."""

    def __init__(self, partition_id: int) -> None:
        self.values = load_data(partition_id)

    def get_parameters(self, config):
        """There is no model."""
        return []

    def fit(self, parameters, config):
        """Return no parameters, and the local mean and count as metrics."""
        count = len(self.values)
        return [], count, {"mean": float(self.values.mean()), "count": count}


def client_fn(context: Context):
    """Construct a Client that will be run in a ClientApp."""
    partition_id = int(context.node_config.get("partition-id", 0))
    return FlowerClient(partition_id).to_client()


# Flower ClientApp
app = ClientApp(client_fn=client_fn)
