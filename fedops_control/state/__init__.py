"""Persistent state (SQLAlchemy): SQLite file by default, PostgreSQL by URL."""
