"""legacy-analytics-app: federated analytics (a global mean) with a custom Flower Strategy."""
