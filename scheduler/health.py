"""The health document: what ``GET /health`` answers and the status page shows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import __version__
from .config import Settings
from .errors import StoreError
from .logs import get_logger
from .store import Database
from .store.engine import describe
from .store.status import queue_counts, slot_use

log = get_logger(__name__)


class Heartbeat(Protocol):
    """Something with a loop that proves it is alive."""

    def seconds_since_beat(self) -> float | None: ...


@dataclass
class HealthReport:
    healthy: bool
    document: dict[str, Any]


class HealthCheck:
    """Builds the health document, at most once per ``ttl`` seconds."""

    def __init__(
        self,
        db: Database,
        settings: Callable[[], Settings],
        worker_id: str,
        dispatcher: Heartbeat | None = None,
        ttl: float = 1.0,
    ) -> None:
        self._db = db
        self._settings = settings
        self._worker_id = worker_id
        self._dispatcher = dispatcher
        self._ttl = ttl
        self._cached: tuple[float, HealthReport] | None = None
        self._last_queue: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def report(self) -> HealthReport:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._ttl:
                return self._cached[1]

            report = await self._build()
            self._cached = (time.monotonic(), report)
            return report

    def _dispatcher_status(self, settings: Settings) -> dict[str, Any]:
        if self._dispatcher is None:
            return {"status": "off"}

        age = self._dispatcher.seconds_since_beat()
        stall_after = settings.dispatcher.stall_after.total_seconds()
        stalled = age is None or age > stall_after
        return {
            "status": "stalled" if stalled else "ok",
            "seconds_since_loop": None if age is None else round(age, 3),
        }

    async def _build(self) -> HealthReport:
        settings = self._settings()
        database: dict[str, Any] = {
            "status": "ok",
            "embedded": self._db.embedded,
            "url": describe(self._db.url) if self._db.url is not None else None,
        }
        slots = {}
        try:
            await self._db.ping()
            self._last_queue = await queue_counts(self._db)
            slots = await slot_use(self._db)
        except StoreError as exc:
            # The queue keeps its last known counts; the status says they are old.
            database["status"] = "unavailable"
            database["error"] = str(exc)
            log.warning("health_check_failed", error=str(exc))

        instances = []
        accounts = []
        for account in settings.accounts:
            account_in_flight = 0
            for instance in account.instances:
                use = slots.get(instance.id)
                in_flight = use.in_flight if use else 0
                account_in_flight += in_flight
                instances.append(
                    {
                        "id": instance.id,
                        "account": account.id,
                        "in_flight": in_flight,
                        "external": use.external if use else 0,
                        "limit": instance.max_parallel,
                    }
                )

            accounts.append(
                {
                    "id": account.id,
                    "in_flight": account_in_flight,
                    "limit": account.max_parallel,
                }
            )

        dispatcher = self._dispatcher_status(settings)
        healthy = database["status"] == "ok" and dispatcher["status"] != "stalled"
        document = {
            "status": "ok" if healthy else "unavailable",
            "version": __version__,
            "worker_id": self._worker_id,
            "database": database,
            "dispatcher": dispatcher,
            "queue": dict(self._last_queue),
            "instances": instances,
            "accounts": accounts,
        }
        return HealthReport(healthy=healthy, document=document)
