"""A dispatcher wired to the simulator over real HTTP and a real Postgres."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from scheduler.amc.client import AmcClient
from scheduler.amc.simulator import Simulator, SimulatorServer, options_from_settings
from scheduler.config import Settings, parse
from scheduler.dispatcher import Dispatcher
from scheduler.jobs import build_run
from scheduler.service import endpoint, open_client
from scheduler.store import Database
from scheduler.store.models import TERMINAL_STATES, events, runs
from scheduler.store.queue import EnqueueResult, enqueue
from scheduler.windows import explicit

FAST_DISPATCHER = {
    "poll_min": 0.05,
    "poll_max": 0.5,
    "admit_interval": 0.2,
    "retry_base": 0.05,
    "retry_max": 1,
    "lease": 3,
    # 20 simulated minutes and 30 slot-seconds at the default speed of 3000.
    "expected_duration": "0.4s",
    "poll_waste": 0.01,
    "shutdown_timeout": 5,
}


def settings_for(
    *,
    speed: float = 3000,
    simulator: dict[str, Any] | None = None,
    accounts: list[dict[str, Any]] | None = None,
    jobs: list[dict[str, Any]] | None = None,
    dispatcher: dict[str, Any] | None = None,
    **extra: Any,
) -> Settings:
    """Two accounts, three instances; account A's limit of 12 binds."""
    document: dict[str, Any] = {
        "amc": {
            "api_url": "simulator",
            "requests_per_second": 1000,
            "burst": 1000,
            "simulator": {"speed": speed, "seed": 3, **(simulator or {})},
        },
        "accounts": accounts
        or [
            {
                "id": "ENTITYA",
                "marketplace_id": "ATVPDKIKX0DER",
                "max_parallel": 12,
                "instances": [
                    {"id": "amca1", "max_parallel": 10},
                    {"id": "amca2", "max_parallel": 10},
                ],
            },
            {
                "id": "ENTITYB",
                "marketplace_id": "A1F83G8C2ARO7P",
                "max_parallel": 200,
                "instances": [{"id": "amcb1", "max_parallel": 10}],
            },
        ],
        "jobs": jobs
        or [
            {"name": "a1-job", "instance": "amca1", "workflow_id": "wf_a1"},
            {"name": "a2-job", "instance": "amca2", "sql": "SELECT 1 FROM x"},
            {"name": "b1-job", "instance": "amcb1", "workflow_id": "wf_b1"},
        ],
        "dispatcher": {**FAST_DISPATCHER, **(dispatcher or {})},
        **extra,
    }
    return parse(document, "test.yaml")


@dataclass
class Harness:
    db: Database
    settings: Settings
    simulator: Simulator
    server: SimulatorServer
    client: AmcClient
    dispatchers: list[tuple[Dispatcher, asyncio.Event, asyncio.Task[None]]] = field(
        default_factory=list
    )

    def start_dispatcher(self, worker_id: str | None = None) -> Dispatcher:
        name = worker_id or f"test-worker-{len(self.dispatchers)}"
        dispatcher = Dispatcher(self.db, self.client, self.settings, name)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        self.dispatchers.append((dispatcher, stop, task))
        return dispatcher

    async def stop_dispatchers(self) -> None:
        for _, stop, _ in self.dispatchers:
            stop.set()

        await asyncio.gather(*(task for _, _, task in self.dispatchers))
        self.dispatchers.clear()

    async def enqueue_windows(
        self, job: str, count: int, *, start: datetime | None = None
    ) -> list[EnqueueResult]:
        """``count`` runs of ``job`` on consecutive one-hour windows."""
        settings_job = self.settings.job(job)
        base = start or datetime(2026, 1, 1)
        new_runs = [
            build_run(
                self.settings,
                settings_job,
                datetime.now(UTC),
                source="test",
                window=explicit(
                    base + timedelta(hours=n), base + timedelta(hours=n + 1)
                ),
            )
            for n in range(count)
        ]
        return await enqueue(self.db, new_runs)

    async def states(self) -> dict[str, int]:
        async with self.db.connect() as conn:
            rows = await conn.execute(
                select(runs.c.state, func.count()).group_by(runs.c.state)
            )
            return dict(rows.all())

    async def wait_until_done(self, within: float = 60.0) -> dict[str, int]:
        """Poll the store (with a deadline) until every run is terminal."""
        terminal = {state.value for state in TERMINAL_STATES}
        deadline = time.monotonic() + within
        while True:
            states = await self.states()
            if states and set(states) <= terminal:
                return states

            if time.monotonic() > deadline:
                raise AssertionError(f"runs not done within {within}s: {states}")

            await asyncio.sleep(0.1)

    async def wait_for(
        self, check: Callable[[], Awaitable[Any]], within: float = 30.0
    ) -> Any:
        deadline = time.monotonic() + within
        while True:
            value = await check()
            if value:
                return value

            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {within}s: {value!r}")

            await asyncio.sleep(0.05)

    async def history(self, run_id: int) -> list[tuple[str | None, str, str]]:
        async with self.db.connect() as conn:
            rows = await conn.execute(
                select(events.c.from_state, events.c.to_state, events.c.reason)
                .where(events.c.run_id == run_id)
                .order_by(events.c.id)
            )
            return [(row[0], row[1], row[2]) for row in rows]


@asynccontextmanager
async def harness(db: Database, settings: Settings) -> AsyncIterator[Harness]:
    simulator = Simulator(
        options_from_settings(settings.amc.simulator, settings.accounts)
    )
    server = SimulatorServer(simulator)
    await server.start()
    client = open_client(settings, endpoint(settings, server))
    rig = Harness(db, settings, simulator, server, client)
    try:
        yield rig
    finally:
        await rig.stop_dispatchers()
        await client.close()
        await server.stop()
