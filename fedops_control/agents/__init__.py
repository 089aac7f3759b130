"""Agent sessions: which device agents are connected, and their command queues."""
