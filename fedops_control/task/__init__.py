"""FL task definitions: validation and ${...} templating of hyperparameters."""
