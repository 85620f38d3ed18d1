from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from scheduler.store.engine import Database
from scheduler.store.migrate import current_revision, downgrade, head_revision, upgrade
from scheduler.store.models import metadata

TABLES = {
    "runs",
    "attempts",
    "events",
    "result_files",
    "schedule_fires",
    "job_registry",
    "external_executions",
    "leases",
    "pauses",
    "workers",
}


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def _open(url: str) -> Database:
    db = Database(url, Path("unused"))
    await db.open()
    return db


async def test_models_and_migrations_agree(empty_database_url: str) -> None:
    """After upgrading to head, autogenerate finds nothing to change."""
    db = await _open(empty_database_url)
    try:
        applied = await upgrade(db)
        assert applied[0] == "0001"
        assert applied[-1] == head_revision()
        async with db.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert await conn.run_sync(_tables) == TABLES
    finally:
        await db.close()


async def test_upgrade_downgrade_upgrade_round_trips(empty_database_url: str) -> None:
    """Down to nothing and up again leaves the same schema, at head."""
    db = await _open(empty_database_url)
    try:
        await upgrade(db)
        await downgrade(db, "base")
        async with db.connect() as conn:
            assert await conn.run_sync(_tables) == set()

        assert await current_revision(db) is None
        await upgrade(db)
        assert await current_revision(db) == head_revision()
        async with db.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await db.close()


async def test_upgrade_is_idempotent(database_url: str) -> None:
    """Upgrading a current schema applies nothing."""
    db = await _open(database_url)
    try:
        assert await upgrade(db) == []
    finally:
        await db.close()


async def test_replicas_migrating_at_once_migrate_once(empty_database_url: str) -> None:
    """Several processes starting together: one applies, the rest find it done."""
    dbs = [await _open(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(upgrade(db) for db in dbs))
        everything = max(results, key=len)
        assert everything[-1] == head_revision()
        assert sorted(results, key=len) == [[], [], [], everything]
        async with dbs[0].connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM alembic_version"))
        assert count == 1
    finally:
        for db in dbs:
            await db.close()
