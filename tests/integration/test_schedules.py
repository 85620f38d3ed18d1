"""Cron schedules: each fire once across replicas and restarts; catch-up modes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from scheduler import schedules as schedules_module
from scheduler.config import parse
from scheduler.schedules import Schedules, enqueue_startup_jobs, fire_times
from scheduler.store import Database
from scheduler.store.models import runs, schedule_fires

BASE = {
    "amc": {"api_url": "simulator"},
    "accounts": [{"id": "E1", "marketplace_id": "M", "instances": [{"id": "amc1"}]}],
}


def settings(catch_up: str = "coalesce", schedule: str = "0 * * * *") -> object:
    document = {
        **BASE,
        "jobs": [
            {
                "name": "hourly",
                "instance": "amc1",
                "workflow_id": "wf",
                "schedule": schedule,
                "time_window": {"last": "1h", "lag": "0s", "align": "hour"},
            },
            {"name": "once", "instance": "amc1", "workflow_id": "wf2"},
        ],
        "schedules": {"catch_up": catch_up, "max_catch_up": 5},
    }
    return parse(document, "t.yaml")


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(datetime(2026, 6, 1, 9, 30, tzinfo=UTC))
    monkeypatch.setattr(schedules_module, "_now", fake)
    return fake


async def _fires(db: Database) -> list[tuple[str, datetime, int | None]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(
                schedule_fires.c.job,
                schedule_fires.c.fire_time,
                schedule_fires.c.run_id,
            ).order_by(schedule_fires.c.fire_time)
        )
        return [(r[0], r[1], r[2]) for r in rows]


async def _run_windows(db: Database) -> list[str]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(runs.c.request).where(runs.c.job == "hourly").order_by(runs.c.id)
        )
        return [r[0]["timeWindowStart"] for r in rows]


def test_fire_times_follow_the_trigger() -> None:
    """fire_times lists the cron's times in (after, until]."""
    job = settings().job("hourly")  # type: ignore[attr-defined]
    start = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    times = fire_times(job, start, start + timedelta(hours=3))
    assert times == [start + timedelta(hours=n) for n in (1, 2, 3)]


async def test_a_fire_is_enqueued_once_across_replicas(
    db: Database, clock: Clock
) -> None:
    """Several replicas firing together enqueue one run per occurrence."""
    config = settings()
    replicas = [Schedules(db, config, f"w{n}") for n in range(4)]  # type: ignore[arg-type]
    await replicas[0]._register()
    clock.at = datetime(2026, 6, 1, 10, 0, 0, 300000, tzinfo=UTC)
    results = await asyncio.gather(*(r.fire("hourly") for r in replicas))
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    (fire,) = await _fires(db)
    assert fire[1] == datetime(2026, 6, 1, 10, tzinfo=UTC)
    assert await _run_windows(db) == ["2026-06-01T09:00:00"]

    # A restart afterwards finds the fire recorded and enqueues nothing.
    restarted = Schedules(db, config, "w9")  # type: ignore[arg-type]
    await restarted._register()
    await restarted.catch_up_all()
    assert len(await _fires(db)) == 1


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("coalesce", ["2026-06-01T13:00:00"]),
        (
            "all",
            [
                "2026-06-01T10:00:00",
                "2026-06-01T11:00:00",
                "2026-06-01T12:00:00",
                "2026-06-01T13:00:00",
            ],
        ),
        ("skip", []),
    ],
)
async def test_missed_fires_are_caught_up(
    db: Database, clock: Clock, mode: str, expected: list[str]
) -> None:
    """Down from 10:00 to 14:20: coalesce one run, all four, or skip them."""
    config = settings(catch_up=mode)
    first = Schedules(db, config, "w1")  # type: ignore[arg-type]
    await first._register()
    clock.at = datetime(2026, 6, 1, 10, 0, 1, tzinfo=UTC)
    await first.fire("hourly")
    clock.at = datetime(2026, 6, 1, 14, 20, tzinfo=UTC)
    second = Schedules(db, config, "w2")  # type: ignore[arg-type]
    await second._register()
    await second.catch_up_all()
    windows = await _run_windows(db)
    assert windows[0] == "2026-06-01T09:00:00"
    assert windows[1:] == expected


async def test_catch_up_never_reaches_before_the_schedule(
    db: Database, clock: Clock
) -> None:
    """A new schedule does not enqueue the fires that came before it existed."""
    config = settings()
    replica = Schedules(db, config, "w1")  # type: ignore[arg-type]
    await replica._register()
    await replica.catch_up_all()
    assert await _fires(db) == []


async def test_a_changed_schedule_starts_afresh(db: Database, clock: Clock) -> None:
    """Changing the cron expression resets the point catch-up starts from."""
    first = Schedules(db, settings(), "w1")  # type: ignore[arg-type]
    await first._register()
    clock.at = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    changed = Schedules(db, settings(schedule="30 * * * *"), "w1")  # type: ignore[arg-type]
    await changed._register()
    await changed.catch_up_all()
    assert await _fires(db) == []


async def test_startup_jobs_are_enqueued_once_ever(db: Database) -> None:
    """An unscheduled job runs at the first start; later starts add nothing."""
    config = settings()
    first = await asyncio.gather(
        *(enqueue_startup_jobs(db, config, f"w{n}") for n in range(3))  # type: ignore[arg-type]
    )
    assert sorted(len(ids) for ids in first) == [0, 0, 1]
    assert await enqueue_startup_jobs(db, config, "w9") == []  # type: ignore[arg-type]
