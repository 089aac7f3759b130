"""A Flower app that fails: its ServerApp raises before the first round."""
