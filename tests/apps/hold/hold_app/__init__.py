"""hold-app: a ServerApp that holds its run open (running, no rounds) for hold-s seconds."""
