"""Generated gRPC/protobuf stubs of proto/ (package fedops.v1). Do not edit: run `make proto`."""
