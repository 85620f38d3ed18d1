"""Where runs come from on their own: start-up jobs now, cron schedules next.

A job without a schedule is enqueued once at start-up, ever: a row in
``startup_runs`` is inserted in the same transaction as the run, so a
restart (or a second replica) finds it there and enqueues nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .config import Settings
from .jobs import build_run
from .logs import get_logger
from .store import Database
from .store.models import startup_runs
from .store.queue import enqueue_in

log = get_logger(__name__)


async def enqueue_startup_jobs(
    db: Database,
    settings: Settings,
    worker_id: str,
    learned: Mapping[str, float] | None = None,
) -> list[int]:
    """Enqueue each unscheduled job that has never been enqueued at start-up."""
    created: list[int] = []
    now = datetime.now(UTC)
    for job in settings.jobs:
        if job.schedule is not None:
            continue

        async with db.begin() as conn:
            first = await conn.execute(
                pg_insert(startup_runs)
                .values(job=job.name)
                .on_conflict_do_nothing()
                .returning(startup_runs.c.job)
            )
            if first.first() is None:
                continue

            new = build_run(settings, job, now, source="startup", learned=learned)
            (result,) = await enqueue_in(conn, [new], worker_id)
            await conn.execute(
                update(startup_runs)
                .where(startup_runs.c.job == job.name)
                .values(run_id=result.run.id)
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
