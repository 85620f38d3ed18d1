"""The daemon: wires the parts once, starts every task, and stops them in reverse."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import func, insert, update

from . import __version__
from .amc.auth import Credentials
from .amc.client import AmcClient, build_client
from .amc.simulator import Simulator, SimulatorServer, options_from_settings
from .config import LoadedConfig, Settings, database_url, load
from .dispatcher import Dispatcher, cancel_run
from .errors import ConfigError, SchedulerError
from .health import HealthCheck
from .logs import get_logger, redactor
from .metrics import Metrics
from .schedules import Schedules, enqueue_startup_jobs
from .store import Database
from .store.engine import describe
from .store.migrate import upgrade
from .store.models import workers
from .web import WebContext, create_app

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
        transaction_pooler=settings.database.transaction_pooler,
    )


@dataclass(frozen=True)
class AmcEndpoint:
    api_url: str
    token_url: str
    credentials: Credentials


def endpoint(settings: Settings, simulator: SimulatorServer | None) -> AmcEndpoint:
    """Where AMC is: the configured API, or the in-process simulator."""
    amc = settings.amc
    if simulator is not None:
        options = simulator.simulator.options
        return AmcEndpoint(
            simulator.url,
            simulator.token_url,
            Credentials(
                options.client_id, options.client_secret, options.refresh_token
            ),
        )

    assert amc.client_id is not None
    assert amc.client_secret is not None
    assert amc.refresh_token is not None
    return AmcEndpoint(
        amc.api_url,
        amc.token_url,
        Credentials(
            amc.client_id,
            amc.client_secret.get_secret_value(),
            amc.refresh_token.get_secret_value(),
        ),
    )


def open_client(
    settings: Settings, where: AmcEndpoint, metrics: Metrics | None = None
) -> AmcClient:
    amc = settings.amc
    return build_client(
        api_url=where.api_url,
        token_url=where.token_url,
        credentials=where.credentials,
        timeout=amc.timeout.total_seconds(),
        max_connections=amc.max_connections,
        requests_per_second=amc.requests_per_second,
        burst=amc.burst,
        observer=metrics.observe_amc if metrics is not None else None,
    )


async def start_simulator(
    settings: Settings, stack: AsyncExitStack
) -> SimulatorServer | None:
    if not settings.amc.uses_simulator:
        return None

    options = options_from_settings(settings.amc.simulator, settings.accounts)
    server = SimulatorServer(Simulator(options))
    await server.start()
    stack.push_async_callback(server.stop)
    log.info("simulator_started", url=server.url, speed=options.speed)
    return server


class Service:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.settings = loaded.settings
        self.worker_id = new_worker_id()
        self.db = open_database(self.settings)
        self.metrics = Metrics()
        self.dispatcher: Dispatcher | None = None
        self.schedules: Schedules | None = None
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[bool] | None = None
        self.http_port: int | None = None
        redactor.add(self.settings.secrets())

    def request_stop(self) -> None:
        self._stop.set()

    def _install_signals(self, stack: AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
            stack.callback(loop.remove_signal_handler, signum)

        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)

    def _on_reload_signal(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Re-read the config file; an invalid one is refused, the old one kept."""
        try:
            loaded = load(self.loaded.path)
        except ConfigError as error:
            log.error(
                "config_reload_refused", config=self.loaded.name, errors=error.problems
            )
            return False

        new = loaded.settings
        restart = [
            section
            for section in ("database", "amc", "server", "logging")
            if getattr(new, section) != getattr(self.settings, section)
        ]
        redactor.add(new.secrets())
        self.loaded, self.settings = loaded, new
        if self.dispatcher is not None:
            self.dispatcher.reload(new)

        if self.schedules is not None:
            await self.schedules.reload(new)

        await enqueue_startup_jobs(self.db, new, self.worker_id, self._learned())
        log.info(
            "config_reloaded",
            config=loaded.name,
            jobs=len(new.jobs),
            accounts=len(new.accounts),
            needs_restart=restart,
        )
        return True

    def _learned(self) -> dict[str, float]:
        if self.dispatcher is None:
            return {}

        return {job: model.median for job, model in self.dispatcher.rt.models.items()}

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

    async def _start_http(self, stack: AsyncExitStack, context: WebContext) -> None:
        runner = web.AppRunner(create_app(context), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        server = self.settings.server
        site = web.TCPSite(runner, server.host, server.port)
        try:
            await site.start()
        except OSError as exc:
            raise SchedulerError(
                f"server: cannot listen on {server.host}:{server.port}:"
                f" {exc.strerror or exc} (set server.port, or stop what uses it)"
            ) from None
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
            simulator = await start_simulator(self.settings, stack)
            client = open_client(
                self.settings, endpoint(self.settings, simulator), self.metrics
            )
            stack.push_async_callback(client.close)
            self.dispatcher = Dispatcher(
                self.db, client, self.settings, self.worker_id, self.metrics
            )
            health = HealthCheck(
                self.db, lambda: self.settings, self.worker_id, self.dispatcher
            )
            runtime = self.dispatcher.rt
            context = WebContext(
                db=self.db,
                settings=lambda: self.settings,
                health=health,
                metrics=self.metrics,
                cancel=lambda run_id: cancel_run(runtime, run_id),
                worker_id=self.worker_id,
            )
            await self._start_http(stack, context)
            await enqueue_startup_jobs(self.db, self.settings, self.worker_id)
            self.schedules = Schedules(
                self.db, self.settings, self.worker_id, learned=self._learned
            )
            await self.schedules.start()
            stack.callback(self.schedules.stop)
            log.info(
                "service_started",
                version=__version__,
                python=sys.version.split()[0],
                worker_id=self.worker_id,
                config=self.loaded.name,
                database=describe(self.db.url) if self.db.url else None,
                embedded_database=self.db.embedded,
                amc_api=self.settings.amc.api_url,
                accounts=len(self.settings.accounts),
                instances=sum(1 for _ in self.settings.instances()),
                jobs=len(self.settings.jobs),
            )
            await self.dispatcher.run(self._stop)
            log.info("service_stopping", worker_id=self.worker_id)

        log.info("service_stopped", worker_id=self.worker_id)
