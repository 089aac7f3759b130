"""legacy-analytics-app: a ServerApp running the FedAnalytics strategy."""

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from legacy_analytics_app.strategy import FedAnalytics


def server_fn(context: Context) -> ServerAppComponents:
    """Construct the components that set the ServerApp's behaviour."""
    num_rounds = int(context.run_config.get("num-server-rounds", 2))
    strategy = FedAnalytics(min_available_clients=2)
    config = ServerConfig(num_rounds=num_rounds)
    return ServerAppComponents(strategy=strategy, config=config)


# Flower ServerApp
app = ServerApp(server_fn=server_fn)
