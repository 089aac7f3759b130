"""Model registry: global model versions with lineage."""
