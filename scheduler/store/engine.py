"""The database: a URL or the embedded server, one async engine per process."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from sqlalchemy import make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import DatabaseUnavailable, StoreError
from ..logs import get_logger
from .embedded import EmbeddedPostgres

log = get_logger(__name__)
EMBEDDED_DATABASE = "amc_scheduler"


def normalise_url(raw: str) -> URL:
    """Any Postgres URL as an asyncpg one; libpq's ``sslmode`` becomes ``ssl``."""
    raw = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+asyncpg://", raw)
    try:
        url = make_url(raw)
        _ = url.port  # parsing the port is what may fail
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise StoreError(f"invalid database URL: {exc}") from None

    if url.get_backend_name() != "postgresql":
        raise StoreError(
            f"unsupported database {url.get_backend_name()!r}:"
            " only Postgres is supported"
        )

    query = dict(url.query)
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")

    return url.set(query=query)


def _statement_name() -> str:
    return f"__amcs_{uuid.uuid4().hex}__"


def describe(url: URL) -> str:
    """The URL without its password, for logs and health."""
    return url.render_as_string(hide_password=True)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Convert driver and connection errors to the store's own errors."""
    try:
        yield
    except (TimeoutError, OSError) as exc:
        raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
    except sqlalchemy.exc.DBAPIError as exc:
        if exc.connection_invalidated or isinstance(
            exc, sqlalchemy.exc.InterfaceError | sqlalchemy.exc.OperationalError
        ):
            raise DatabaseUnavailable(f"database unreachable: {exc.orig}") from exc

        raise StoreError(f"database error: {exc.orig}") from exc
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StoreError(f"database error: {exc}") from exc


class Database:
    """Owns the engine and, with no URL configured, the embedded server."""

    def __init__(
        self,
        url: str | None,
        data_dir: Path,
        pool_size: int = 10,
        connect_timeout: timedelta = timedelta(seconds=10),
        transaction_pooler: bool = False,
    ) -> None:
        self._raw_url = url
        self._data_dir = data_dir
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout.total_seconds()
        self._transaction_pooler = transaction_pooler
        self._embedded: EmbeddedPostgres | None = None
        self._engine: AsyncEngine | None = None
        self.url: URL | None = None

    @property
    def embedded(self) -> bool:
        return self._raw_url is None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("database is not open")

        return self._engine

    async def open(self) -> None:
        if self._raw_url is None:
            self._embedded = EmbeddedPostgres(self._data_dir)
            server_url = await asyncio.to_thread(self._embedded.start)
            self.url = normalise_url(server_url)
            await self._ensure_database(EMBEDDED_DATABASE)
            self.url = self.url.set(database=EMBEDDED_DATABASE)
        else:
            self.url = normalise_url(self._raw_url)

        self._engine = self._create_engine(self.url, self._pool_size)
        log.debug("database_opened", url=describe(self.url))

    def _create_engine(self, url: URL, pool_size: int) -> AsyncEngine:
        connect_args: dict[str, Any] = {
            "timeout": self._connect_timeout,
            "server_settings": {"application_name": "amc-scheduler"},
        }
        if self._transaction_pooler:
            # A transaction pooler hands each transaction to any server
            # connection: prepared statements must not be cached or reused
            # by name across them.
            connect_args["statement_cache_size"] = 0
            connect_args["prepared_statement_name_func"] = _statement_name
            url = url.update_query_dict({"prepared_statement_cache_size": "0"})

        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_recycle=1800,
            pool_timeout=self._connect_timeout,
            connect_args=connect_args,
        )

    async def _ensure_database(self, name: str) -> None:
        assert self.url is not None
        engine = create_async_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                exists = await conn.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"),
                    {"name": name},
                )
                if not exists:
                    with contextlib.suppress(sqlalchemy.exc.ProgrammingError):
                        await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await engine.dispose()

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction that commits on success."""
        with translated():
            async with self.engine.begin() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        with translated():
            async with self.engine.connect() as conn:
                yield conn

    async def ping(self, within: float = 2.0) -> None:
        """Raise DatabaseUnavailable unless a trivial query answers in time."""
        try:
            async with asyncio.timeout(within), self.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except TimeoutError as exc:
            raise DatabaseUnavailable("database did not answer in time") from exc
