"""Alembic environment.

The scheduler runs migrations itself (``amc-scheduler migrate`` and at daemon
start), passing an open connection that already holds the migration lock.
Run from the ``alembic`` command, for writing a new revision, it connects to
``AMC_SCHEDULER_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from scheduler.store.engine import normalise_url
from scheduler.store.models import metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        on_version_apply=context.config.attributes.get("on_version_apply"),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(normalise_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_configure_and_run)
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _configure_and_run(connection)
else:
    url = os.environ.get("AMC_SCHEDULER_DATABASE_URL")
    if not url:
        raise SystemExit("set AMC_SCHEDULER_DATABASE_URL to run alembic directly")

    asyncio.run(_run_from_url(url))
