"""Connected device agents: sessions, command queues, liveness."""
