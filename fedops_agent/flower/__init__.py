"""Instrumentation that runs inside Flower's ClientApp process, around the user's app."""
