from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from scheduler.logs import configure
from scheduler.store.engine import Database
from tests.support.postgres import (
    PostgresServer,
    new_database_name,
    prepare_template,
    render,
    start_server,
)


def pytest_configure(config: pytest.Config) -> None:
    configure(level="debug", fmt="json")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The Postgres server every store test runs against."""
    yield from start_server(tmp_path_factory.mktemp("postgres"))


@pytest.fixture(scope="session")
def template_database(pg_server: PostgresServer) -> Iterator[str]:
    """A database migrated to head by the production code, cloned per test."""
    yield from prepare_template(pg_server)


@pytest.fixture
async def database_url(
    pg_server: PostgresServer, template_database: str
) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = new_database_name()
    url = await pg_server.create_database(name, template=template_database)
    yield render(url)
    await pg_server.drop_database(name)


@pytest.fixture
async def empty_database_url(pg_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh database with no tables at all."""
    name = new_database_name()
    url = await pg_server.create_database(name)
    yield render(url)
    await pg_server.drop_database(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, Path("unused"))
    await database.open()
    yield database
    await database.close()
