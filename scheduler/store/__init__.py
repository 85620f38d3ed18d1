"""Postgres: tables, engine (embedded or URL), migrations, queue and history."""

from .engine import Database
from .models import LIVE_STATES, SLOT_STATES, TERMINAL_STATES, RunState

__all__ = ["LIVE_STATES", "SLOT_STATES", "TERMINAL_STATES", "Database", "RunState"]
