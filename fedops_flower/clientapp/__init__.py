"""The ClientApp wrapper: runs in the flwr-clientapp process on a device."""
