"""`fedopsctl`, the command line of FedOps Stack (one module per command group)."""
