"""legacy-workflow-app: FedAvg on synthetic data with Flower's older API (NumPyClient, DefaultWorkflow)."""
