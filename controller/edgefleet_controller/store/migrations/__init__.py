"""Alembic migrations of the controller store, run programmatically by ``Store.open`` (no alembic.ini)."""
