"""sklearn-logreg-app: a Flower / scikit-learn ServerApp (FedAvg with server_fn)."""

from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from sklearn_logreg_app.task import get_model, get_model_params, set_initial_params


def server_fn(context: Context) -> ServerAppComponents:
    model = get_model(str(context.run_config["penalty"]), int(context.run_config["local-epochs"]))
    set_initial_params(model)
    min_nodes = int(context.run_config["min-nodes"])
    strategy = FedAvg(
        min_fit_clients=min_nodes,
        min_evaluate_clients=min_nodes,
        min_available_clients=min_nodes,
        initial_parameters=ndarrays_to_parameters(get_model_params(model)),
    )
    num_rounds = int(context.run_config["num-server-rounds"])
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))


app = ServerApp(server_fn=server_fn)
