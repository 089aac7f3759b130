"""FedOps device agent: registers the device, heartbeats, runs Flower SuperNodes on command."""
