"""The control service's gRPC server."""
