"""legacy-serverfn-app: FedAvg on synthetic data with a ServerApp built from server_fn."""
