"""Where runs come from on their own: start-up jobs and cron schedules.

A job without a schedule is enqueued once at start-up, ever: its row in
``job_registry`` records the run, in the same transaction as the run.

A scheduled job fires on an APScheduler cron trigger in the job's time zone,
but APScheduler is only the alarm clock: at each alarm (and at start-up) the
fire times due since the last recorded one are computed from the trigger,
and each fire is a row in ``schedule_fires`` keyed by (job, fire time),
inserted in the same transaction as its run. Any number of replicas and
restarts therefore enqueue each occurrence once. Fires missed while no
process ran are caught up as ``schedules.catch_up`` says: ``coalesce`` (one
run for the latest), ``all`` (each, up to ``max_catch_up``) or ``skip``.
Catch-up never reaches back before the job's schedule was first seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .config import JobSettings, Settings
from .jobs import build_run
from .logs import get_logger
from .store import Database
from .store.models import job_registry, schedule_fires
from .store.queue import enqueue_in
from .windows import zone

log = get_logger(__name__)
# A fire this recent counts as on time, not as missed.
_GRACE = timedelta(minutes=1)


def _now() -> datetime:
    return datetime.now(UTC)


def trigger_for(job: JobSettings) -> CronTrigger:
    assert job.schedule is not None
    return CronTrigger.from_crontab(job.schedule, timezone=zone(job.time_zone))


def fire_times(job: JobSettings, after: datetime, until: datetime) -> list[datetime]:
    """Every fire time of ``job`` in ``(after, until]``, oldest first."""
    trigger = trigger_for(job)
    times: list[datetime] = []
    previous: datetime | None = None
    moment = after
    while True:
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None or fire > until:
            return times

        if fire > after:
            times.append(fire.astimezone(UTC))

        previous = fire
        moment = fire


async def enqueue_startup_jobs(
    db: Database,
    settings: Settings,
    worker_id: str,
    learned: Mapping[str, float] | None = None,
) -> list[int]:
    """Enqueue each unscheduled job that has never been enqueued at start-up."""
    created: list[int] = []
    now = _now()
    for job in settings.jobs:
        if job.schedule is not None:
            continue

        async with db.begin() as conn:
            await conn.execute(
                pg_insert(job_registry).values(job=job.name).on_conflict_do_nothing()
            )
            # The row lock makes replicas starting together take turns; the
            # second finds the run the first recorded.
            recorded = await conn.scalar(
                select(job_registry.c.startup_run_id)
                .where(job_registry.c.job == job.name)
                .with_for_update()
            )
            if recorded is not None:
                continue

            new = build_run(settings, job, now, source="startup", learned=learned)
            (result,) = await enqueue_in(conn, [new], worker_id)
            await conn.execute(
                update(job_registry)
                .where(job_registry.c.job == job.name)
                .values(startup_run_id=result.run.id)
            )

        created.append(result.run.id)
        log.info(
            "run_enqueued",
            run_id=result.run.id,
            job=job.name,
            source="startup",
            window=result.run.window_fields(),
            created=result.created,
        )

    return created


class Schedules:
    """The cron side of the service: one APScheduler job per scheduled job."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        worker_id: str,
        learned: Callable[[], Mapping[str, float]] = dict,
    ) -> None:
        self.db = db
        self.settings = settings
        self.worker_id = worker_id
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        # Each job's expected run time as history has it, for new runs.
        self.learned = learned

    async def start(self) -> None:
        await self._register()
        await self.catch_up_all()
        self._install()
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def reload(self, settings: Settings) -> None:
        self.settings = settings
        await self._register()
        await self.catch_up_all()
        self._install()

    def _install(self) -> None:
        self.scheduler.remove_all_jobs()
        for job in self.settings.jobs:
            if job.schedule is None:
                continue

            self.scheduler.add_job(
                self.fire,
                trigger=trigger_for(job),
                args=[job.name],
                id=job.name,
                name=job.name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=None,
                replace_existing=True,
            )

    async def _register(self) -> None:
        """Note each scheduled job and when its current schedule was first seen."""
        now = _now()
        async with self.db.begin() as conn:
            for job in self.settings.jobs:
                if job.schedule is None:
                    continue

                statement = pg_insert(job_registry).values(
                    job=job.name, schedule=job.schedule, schedule_since=now
                )
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["job"],
                        set_={
                            "schedule": statement.excluded.schedule,
                            "schedule_since": statement.excluded.schedule_since,
                        },
                        where=job_registry.c.schedule.is_distinct_from(
                            statement.excluded.schedule
                        ),
                    )
                )

    async def catch_up_all(self) -> None:
        for job in self.settings.jobs:
            if job.schedule is not None:
                await self.fire(job.name)

    async def fire(self, name: str) -> list[int]:
        """Enqueue the fires of ``name`` due now; safe to call from any replica."""
        try:
            job = self.settings.job(name)
        except KeyError:
            return []

        if job.schedule is None:
            return []

        async with self.db.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        job_registry.c.schedule_since,
                        select(func.max(schedule_fires.c.fire_time))
                        .where(schedule_fires.c.job == name)
                        .scalar_subquery(),
                    ).where(job_registry.c.job == name)
                )
            ).first()

        now = _now()
        since = row[0] if row is not None and row[0] is not None else now
        after = max(since, row[1]) if row is not None and row[1] is not None else since
        due = fire_times(job, after, now)
        mode = self.settings.schedules.catch_up
        if len(due) > 1 or (due and due[-1] < now - _GRACE):
            # Fires missed while no process ran.
            if mode == "skip":
                due = [fire for fire in due if fire >= now - _GRACE]
            elif mode == "coalesce":
                due = due[-1:]
            else:
                due = due[-self.settings.schedules.max_catch_up :]

        return [run_id for fire in due if (run_id := await self._enqueue(job, fire))]

    async def _enqueue(self, job: JobSettings, fire: datetime) -> int | None:
        async with self.db.begin() as conn:
            claimed = await conn.execute(
                pg_insert(schedule_fires)
                .values(job=job.name, fire_time=fire)
                .on_conflict_do_nothing()
                .returning(schedule_fires.c.job)
            )
            if claimed.first() is None:
                return None

            new = build_run(
                self.settings, job, fire, source="schedule", learned=self.learned()
            )
            (result,) = await enqueue_in(conn, [new], self.worker_id)
            await conn.execute(
                update(schedule_fires)
                .where(
                    schedule_fires.c.job == job.name, schedule_fires.c.fire_time == fire
                )
                .values(run_id=result.run.id)
            )

        log.info(
            "run_enqueued",
            run_id=result.run.id,
            job=job.name,
            source="schedule",
            fire_time=fire.isoformat(),
            window=result.run.window_fields(),
            created=result.created,
        )
        return result.run.id
