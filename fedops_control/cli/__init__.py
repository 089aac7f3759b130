"""`fedopsctl`: the operator CLI (rich tables, or JSON with --output json)."""
