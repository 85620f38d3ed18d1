"""Behind PgBouncer in transaction mode, with database.transaction_pooler set."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from scheduler.store.engine import Database
from scheduler.store.migrate import upgrade
from scheduler.store.queue import AccountLimits, InstanceLimit, admit, enqueue
from scheduler.store.transitions import record_submitted
from tests.support.postgres import PostgresServer, new_database_name
from tests.support.runs import new_run

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bouncer(pg_server: PostgresServer) -> Iterator[str | None]:
    """A PgBouncer in transaction mode in front of the test server.

    Where PgBouncer is not installed, or the server listens on a private
    Unix socket only (the embedded one), the test checks the settings alone;
    .ci/run installs PgBouncer where it can, so CI's run against the server on
    5432 goes through a real one.
    """
    if PGBOUNCER is None or pg_server.embedded is not None:
        yield None
        return

    # Its own directory under /tmp: run as root, PgBouncer drops to `nobody`,
    # which cannot enter pytest's private temporary directories.
    tmp_path = Path(tempfile.mkdtemp(prefix="amcs-pgbouncer-"))
    name = new_database_name()
    asyncio.run(pg_server.create_database(name))
    admin = pg_server.admin
    host = admin.host or "127.0.0.1"
    port = admin.port or 5432
    listen = _free_port()
    tmp_path.chmod(0o777)
    (tmp_path / "users.txt").write_text('"postgres" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(
        f"[databases]\n{name} = host={host} port={port} dbname={name}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\n"
        "auth_type = trust\n"
        f"auth_file = {tmp_path / 'users.txt'}\npool_mode = transaction\n"
        "default_pool_size = 3\nmax_client_conn = 100\n"
        f"logfile = {tmp_path / 'pgbouncer.log'}\n"
    )
    for path in tmp_path.iterdir():
        path.chmod(0o666)

    command = [PGBOUNCER, str(tmp_path / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]

    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)

    try:
        yield f"postgresql://postgres@127.0.0.1:{listen}/{name}"
    finally:
        process.terminate()
        process.wait(10)
        asyncio.run(pg_server.drop_database(name))
        shutil.rmtree(tmp_path, ignore_errors=True)


async def test_the_queue_works_through_a_transaction_pooler(
    bouncer: str | None, database_url: str
) -> None:
    """Migrate, enqueue, admit and record through PgBouncer in transaction mode."""
    url = bouncer or database_url
    db = Database(url, Path("unused"), pool_size=4, transaction_pooler=True)
    await db.open()
    try:
        connect_args = db.engine.dialect.create_connect_args(db.engine.url)[1]
        assert db.engine.url.query["prepared_statement_cache_size"] == "0"
        assert db._transaction_pooler
        assert connect_args is not None
        if bouncer is None:
            return

        await upgrade(db)
        limits = AccountLimits("ACC1", 20, (InstanceLimit("amc1", 10),))
        await asyncio.gather(*(enqueue(db, [new_run()]) for _ in range(20)))
        claimed = await admit(db, limits, owner="w", lease_seconds=60, max_claims=10)
        recorded = await asyncio.gather(
            *(
                record_submitted(
                    db,
                    run,
                    owner="w",
                    execution_id=f"e{run.id}",
                    amc_status="PENDING",
                    amc_create_time=None,
                )
                for run in claimed.claimed
            )
        )
        assert len(claimed.claimed) == 10
        assert all(r is not None and r.state == "pending" for r in recorded)
        async with db.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM attempts")) == 10
    finally:
        await db.close()
