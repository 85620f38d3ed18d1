"""A Postgres for the tests: the server named by AMC_SCHEDULER_TEST_DATABASE_URL,
or an embedded one started for the session. Each test gets a fresh database
cloned from a template that the production migration code has brought to head.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler.store.embedded import EmbeddedPostgres
from scheduler.store.engine import Database, normalise_url
from scheduler.store.migrate import upgrade

TEST_URL_ENV = "AMC_SCHEDULER_TEST_DATABASE_URL"


@dataclass
class PostgresServer:
    """Where the tests' databases live; ``admin`` is a URL to a maintenance db."""

    admin: URL
    embedded: EmbeddedPostgres | None = None

    def url_for(self, database: str) -> URL:
        return self.admin.set(database=database)

    async def execute(self, *statements: str) -> None:
        engine = create_async_engine(self.admin, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    async def create_database(self, name: str, template: str | None = None) -> URL:
        clause = f' TEMPLATE "{template}"' if template else ""
        await self.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url_for(name)

    async def drop_database(self, name: str) -> None:
        await self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server(tmp: Path) -> Iterator[PostgresServer]:
    raw = os.environ.get(TEST_URL_ENV)
    if raw:
        yield PostgresServer(admin=normalise_url(raw))
        return

    embedded = EmbeddedPostgres(tmp / "pg")
    url = normalise_url(embedded.start())
    try:
        yield PostgresServer(admin=url, embedded=embedded)
    finally:
        embedded.stop()


def render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def _migrate(url: URL) -> None:
    db = Database(render(url), Path("unused"))
    await db.open()
    try:
        await upgrade(db)
    finally:
        await db.close()


def prepare_template(server: PostgresServer) -> Iterator[str]:
    name = f"amcs_template_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(server.create_database(name))
    asyncio.run(_migrate(url))
    try:
        yield name
    finally:
        asyncio.run(server.drop_database(name))


def new_database_name() -> str:
    return f"amcs_test_{uuid.uuid4().hex[:12]}"
