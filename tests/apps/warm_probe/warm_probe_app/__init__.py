"""warm-probe-app: FedAvg with Flower's Message API and list-valued metrics."""
