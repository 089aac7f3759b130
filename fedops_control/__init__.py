"""FedOps control service: tasks, clients, runs, rounds and the model registry."""
