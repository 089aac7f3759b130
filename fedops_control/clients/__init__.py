"""Clients as operators see them: labels, listing and counting, selection by label."""
