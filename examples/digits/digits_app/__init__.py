"""A standard Flower app: FedAvg on scikit-learn's digits with a small torch MLP."""
