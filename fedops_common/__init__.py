"""Pieces shared by every FedOps actor: generated stubs, logging, conversions, networking."""

__version__ = "0.1.0"
