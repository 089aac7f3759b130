"""Access control: tokens and credentials, roles per RPC, the audit log, TLS certificates."""
