"""The ServerApp wrapper and its hooks: runs in the flwr-serverapp process."""
