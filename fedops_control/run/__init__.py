"""Runs: launching Flower's SuperLink, building the observed app bundle, tracking state."""
