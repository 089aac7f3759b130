"""Alembic migrations of the control service's database."""
