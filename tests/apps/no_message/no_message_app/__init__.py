"""no-message-app: a ServerApp that sends no message (a run with no rounds)."""
