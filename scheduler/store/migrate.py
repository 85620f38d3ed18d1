"""Schema migrations, applied the same way by ``migrate``, the daemon and tests.

All pending revisions run in one transaction that first takes a transaction
advisory lock, so replicas starting together migrate once and the others
find the schema current. Transaction-scoped locks also work behind PgBouncer
in transaction mode.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..logs import get_logger
from .engine import Database

log = get_logger(__name__)

# pg_advisory_xact_lock(class, key): the class is ours ("AMC"), keys differ by use.
LOCK_CLASS = 0x414D43
MIGRATION_LOCK_KEY = 1


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("scheduler.migrations")))
    if connection is not None:
        config.attributes["connection"] = connection

    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(db: Database) -> str | None:
    async with db.connect() as conn:
        return await conn.run_sync(_current)


def _lock(connection: Connection) -> None:
    connection.execute(
        text("SELECT pg_advisory_xact_lock(:cls, :key)"),
        {"cls": LOCK_CLASS, "key": MIGRATION_LOCK_KEY},
    )


async def upgrade(db: Database, revision: str = "head") -> list[str]:
    """Apply pending migrations; returns the revisions applied."""
    applied: list[str] = []

    def record(*, step: Any, **_: Any) -> None:
        revision = step.up_revision
        applied.append(revision.revision)
        log.info("migration_applied", revision=revision.revision, name=revision.doc)

    def run(connection: Connection) -> None:
        _lock(connection)
        config = alembic_config(connection)
        config.attributes["on_version_apply"] = record
        command.upgrade(config, revision)

    async with db.begin() as conn:
        await conn.run_sync(run)

    return applied


async def downgrade(db: Database, revision: str) -> None:
    def run(connection: Connection) -> None:
        _lock(connection)
        command.downgrade(alembic_config(connection), revision)

    async with db.begin() as conn:
        await conn.run_sync(run)
