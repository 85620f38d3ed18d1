"""Alembic migrations of the scheduler's tables (installed as scheduler.migrations)."""
