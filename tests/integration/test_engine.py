from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import text

from scheduler.errors import DatabaseUnavailable, StoreError
from scheduler.store.engine import Database, normalise_url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_urls_are_normalised_to_asyncpg() -> None:
    """libpq-style URLs become asyncpg URLs and sslmode becomes ssl."""
    url = normalise_url("postgres://u:p@db.example:5433/amc?sslmode=require")
    assert url.drivername == "postgresql+asyncpg"
    assert url.query == {"ssl": "require"}
    assert normalise_url("postgresql+psycopg://h/d").drivername == "postgresql+asyncpg"


def test_other_databases_are_refused() -> None:
    """Only Postgres is supported, and the error says so."""
    with pytest.raises(StoreError, match="only Postgres"):
        normalise_url("mysql://h/d")

    with pytest.raises(StoreError, match="invalid database URL"):
        normalise_url("not a url")


async def test_unreachable_database_is_database_unavailable() -> None:
    """Nothing listening: the store's own error, not a driver exception."""
    db = Database(f"postgresql://postgres@127.0.0.1:{_free_port()}/x", Path("unused"))
    await db.open()
    try:
        with pytest.raises(DatabaseUnavailable):
            await db.ping(within=5)

        with pytest.raises(DatabaseUnavailable):
            async with db.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await db.close()


async def test_sql_errors_are_store_errors(db: Database) -> None:
    """A failing statement surfaces as StoreError with the server's message."""
    with pytest.raises(StoreError, match="no_such_table"):
        async with db.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
