"""The daemon: wires the parts once, starts every task, and stops them in reverse."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web
from sqlalchemy import func, insert, update

from . import __version__
from .config import LoadedConfig, Settings, database_url
from .health import HealthCheck
from .logs import get_logger, redactor
from .store import Database
from .store.engine import describe
from .store.migrate import upgrade
from .store.models import workers
from .web import create_app

log = get_logger(__name__)


def new_worker_id() -> str:
    """A fresh identity per process start, so a crashed process's leases stand out."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def open_database(settings: Settings) -> Database:
    return Database(
        database_url(settings),
        settings.database.data_dir,
        pool_size=settings.database.pool_size,
        connect_timeout=settings.database.connect_timeout,
    )


class Service:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.settings = loaded.settings
        self.worker_id = new_worker_id()
        self.db = open_database(self.settings)
        self._stop = asyncio.Event()
        self.http_port: int | None = None
        redactor.add(self.settings.secrets())

    def request_stop(self) -> None:
        self._stop.set()

    def _install_signals(self, stack: AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
            stack.callback(loop.remove_signal_handler, signum)

    def _on_stop_signal(self, signum: int) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.request_stop()

    async def _register_worker(self) -> None:
        async with self.db.begin() as conn:
            await conn.execute(
                insert(workers).values(
                    id=self.worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    version=__version__,
                )
            )

    async def _retire_worker(self) -> None:
        async with self.db.begin() as conn:
            await conn.execute(
                update(workers)
                .where(workers.c.id == self.worker_id)
                .values(stopped_at=func.now())
            )

    async def _start_http(self, stack: AsyncExitStack) -> None:
        health = HealthCheck(self.db, lambda: self.settings, self.worker_id)
        runner = web.AppRunner(create_app(health), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.settings.server.host, self.settings.server.port)
        await site.start()
        address: Any = runner.addresses[0]
        self.http_port = int(address[1])
        log.info(
            "http_server_started", host=self.settings.server.host, port=self.http_port
        )

    async def run(self) -> None:
        async with AsyncExitStack() as stack:
            self._install_signals(stack)
            await self.db.open()
            stack.push_async_callback(self.db.close)
            await upgrade(self.db)
            await self._register_worker()
            stack.push_async_callback(self._retire_worker)
            await self._start_http(stack)
            log.info(
                "service_started",
                version=__version__,
                worker_id=self.worker_id,
                config=self.loaded.name,
                database=describe(self.db.url) if self.db.url else None,
                embedded_database=self.db.embedded,
                amc_api=self.settings.amc.api_url,
                accounts=len(self.settings.accounts),
                instances=sum(1 for _ in self.settings.instances()),
                jobs=len(self.settings.jobs),
            )
            await self._stop.wait()
            log.info("service_stopping", worker_id=self.worker_id)

        log.info("service_stopped", worker_id=self.worker_id)
