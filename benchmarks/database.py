"""A Postgres for benchmarks: a server named by URL, or an embedded one."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from scheduler.store.embedded import EmbeddedPostgres
from scheduler.store.engine import normalise_url


@dataclass
class BenchDatabase:
    """Hands out fresh databases on one server."""

    admin_url: str

    def fresh(self) -> str:
        name = f"amcs_bench_{uuid.uuid4().hex[:10]}"

        async def create() -> None:
            conn = await asyncpg.connect(self._dsn(self.admin_url))
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create()) if not _running() else _run_in_thread(create())
        url = normalise_url(self.admin_url).set(database=name)
        return url.render_as_string(hide_password=False)

    @staticmethod
    def _dsn(url: str) -> str:
        return (
            normalise_url(url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False

    return True


def _run_in_thread(coro: object) -> None:
    import threading

    error: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)  # type: ignore[arg-type]
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]


@contextmanager
def bench_database(url: str | None) -> Iterator[BenchDatabase]:
    if url:
        yield BenchDatabase(url)
        return

    with tempfile.TemporaryDirectory(prefix="amcs-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        admin = server.start()
        try:
            yield BenchDatabase(admin)
        finally:
            server.stop()
