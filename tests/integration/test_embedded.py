from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from scheduler.store.embedded import EmbeddedPostgres
from scheduler.store.engine import EMBEDDED_DATABASE, Database
from scheduler.store.migrate import upgrade


def _postmaster_running(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return False

    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False

    return True


async def test_embedded_database_starts_reuses_and_stops(tmp_path: Path) -> None:
    """No URL: a real Postgres in data_dir, kept across restarts, stopped on close."""
    data_dir = tmp_path / "state" / "postgres"
    first = Database(None, data_dir)
    await first.open()
    try:
        assert first.url is not None
        assert first.url.database == EMBEDDED_DATABASE
        await upgrade(first)
        async with first.begin() as conn:
            await conn.execute(text("CREATE TABLE kept (v int)"))
            await conn.execute(text("INSERT INTO kept VALUES (42)"))
    finally:
        await first.close()

    assert not _postmaster_running(data_dir)
    second = Database(None, data_dir)
    await second.open()
    try:
        async with second.connect() as conn:
            assert await conn.scalar(text("SELECT v FROM kept")) == 42
    finally:
        await second.close()

    assert not _postmaster_running(data_dir)


def test_last_live_user_stops_the_server(tmp_path: Path) -> None:
    """The server stays up while a live process uses it; a dead one is forgotten."""
    data_dir = tmp_path / "pg"
    mine = EmbeddedPostgres(data_dir)
    mine.start()
    # A process that registered and then died without leaving.
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            "from scheduler.store.embedded import EmbeddedPostgres;"
            "EmbeddedPostgres(Path(sys.argv[1])).start(); import os; os._exit(0)",
            str(data_dir),
        ],
        check=True,
    )
    assert child.returncode == 0
    users = json.loads((tmp_path / "pg.users.json").read_text())
    assert len(users) == 2
    mine.stop()
    assert not _postmaster_running(data_dir)
