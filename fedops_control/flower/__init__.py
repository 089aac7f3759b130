"""Instrumentation that runs inside Flower's ServerApp process, around the user's app."""
