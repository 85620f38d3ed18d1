"""What the poller reads and writes: in-flight runs, outside executions, leases,
run-time history and the backlog per instance."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .engine import Database
from .models import (
    SLOT_STATES,
    RunState,
    attempts,
    external_executions,
    leases,
    runs,
    workers,
)
from .records import RunRecord

IN_FLIGHT = [RunState.PENDING.value, RunState.RUNNING.value]


async def runs_on_instance(
    db: Database, instance_id: str, states: Sequence[RunState]
) -> list[RunRecord]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(runs)
            .where(
                runs.c.instance_id == instance_id,
                runs.c.state.in_([state.value for state in states]),
            )
            .order_by(runs.c.id)
        )
        return [RunRecord.from_row(row) for row in rows]


async def adoption_candidates(db: Database, instance_id: str) -> list[RunRecord]:
    """Runs whose create may have landed without being recorded."""
    async with db.connect() as conn:
        rows = await conn.execute(
            select(runs)
            .where(
                runs.c.instance_id == instance_id,
                runs.c.state == RunState.QUEUED.value,
                runs.c.lookup_since.is_not(None),
            )
            .order_by(runs.c.lookup_since)
        )
        return [RunRecord.from_row(row) for row in rows]


async def owned_execution_ids(db: Database, execution_ids: Iterable[str]) -> set[str]:
    """Which of these executions already belong to a run."""
    ids = list(execution_ids)
    if not ids:
        return set()

    async with db.connect() as conn:
        rows = await conn.execute(
            select(attempts.c.execution_id).where(attempts.c.execution_id.in_(ids))
        )
        return {row[0] for row in rows}


@dataclass(frozen=True)
class External:
    execution_id: str
    instance_id: str
    status: str
    in_flight: bool
    workflow_id: str | None
    create_time: datetime | None


async def external_on_instance(db: Database, instance_id: str) -> list[External]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(external_executions).where(
                external_executions.c.instance_id == instance_id,
                external_executions.c.in_flight,
            )
        )
        return [
            External(
                row.execution_id,
                row.instance_id,
                row.status,
                row.in_flight,
                row.workflow_id,
                row.create_time,
            )
            for row in rows
        ]


async def record_external(
    db: Database, account_id: str, seen: Sequence[External]
) -> None:
    """Upsert executions that no run owns, as the list call showed them."""
    if not seen:
        return

    statement = pg_insert(external_executions).values(
        [
            {
                "execution_id": e.execution_id,
                "account_id": account_id,
                "instance_id": e.instance_id,
                "workflow_id": e.workflow_id,
                "status": e.status,
                "in_flight": e.in_flight,
                "create_time": e.create_time,
            }
            for e in seen
        ]
    )
    async with db.begin() as conn:
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["execution_id"],
                set_={
                    "status": statement.excluded.status,
                    "in_flight": statement.excluded.in_flight,
                    "last_seen_at": func.now(),
                },
            )
        )


async def forget_external(db: Database, execution_ids: Sequence[str]) -> None:
    if not execution_ids:
        return

    async with db.begin() as conn:
        await conn.execute(
            update(external_executions)
            .where(external_executions.c.execution_id.in_(list(execution_ids)))
            .values(in_flight=False, last_seen_at=func.now())
        )


async def prune_external(db: Database, older_than_seconds: float) -> int:
    """Drop finished outside executions nobody has seen for a while."""
    async with db.begin() as conn:
        result = await conn.execute(
            delete(external_executions).where(
                ~external_executions.c.in_flight,
                external_executions.c.last_seen_at
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_seconds),
            )
        )
        return int(result.rowcount)


# Leases on named roles ("poll:<instance>")


async def acquire_leases(
    db: Database, names: Sequence[str], owner: str, seconds: float
) -> set[str]:
    """Take the named leases that are free or expired (or already ours)."""
    if not names:
        return set()

    until = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
    statement = pg_insert(leases).values(
        [{"name": name, "owner": owner, "expires_at": until} for name in names]
    )
    upsert = statement.on_conflict_do_update(
        index_elements=["name"],
        set_={
            "owner": statement.excluded.owner,
            "expires_at": statement.excluded.expires_at,
            "acquired_at": func.now(),
        },
        where=(leases.c.expires_at < func.now()) | (leases.c.owner == owner),
    ).returning(leases.c.name)
    async with db.begin() as conn:
        return {row[0] for row in await conn.execute(upsert)}


async def release_leases(db: Database, names: Sequence[str], owner: str) -> None:
    async with db.begin() as conn:
        await conn.execute(
            delete(leases).where(
                leases.c.owner == owner, leases.c.name.in_(list(names))
            )
        )


async def release_all_leases(db: Database, owner: str) -> None:
    async with db.begin() as conn:
        await conn.execute(delete(leases).where(leases.c.owner == owner))


async def live_workers(db: Database, within_seconds: float) -> int:
    async with db.connect() as conn:
        count = await conn.scalar(
            select(func.count()).where(
                workers.c.stopped_at.is_(None),
                workers.c.heartbeat_at
                > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, within_seconds),
            )
        )
        return max(1, int(count or 0))


async def heartbeat(db: Database, worker_id: str) -> None:
    async with db.begin() as conn:
        await conn.execute(
            update(workers)
            .where(workers.c.id == worker_id)
            .values(heartbeat_at=func.now())
        )


# History the dispatcher learns from

_DURATIONS = text(
    """
    SELECT j.job,
           extract(epoch FROM coalesce(a.amc_end_time, a.finished_at)
                              - coalesce(a.amc_create_time, a.submitted_at)) AS seconds
    FROM unnest(CAST(:jobs AS text[])) AS j(job)
    CROSS JOIN LATERAL (
        SELECT r.id, r.attempt FROM runs r
        WHERE r.job = j.job AND r.state = 'succeeded'
        ORDER BY r.finished_at DESC
        LIMIT :recent
    ) r
    JOIN attempts a ON a.run_id = r.id AND a.number = r.attempt
    """
)


async def recent_durations(
    db: Database, jobs: Sequence[str], recent: int = 50
) -> dict[str, list[float]]:
    """The run times (by AMC's clock) of each job's latest successes."""
    found: dict[str, list[float]] = {job: [] for job in jobs}
    if not jobs:
        return found

    async with db.connect() as conn:
        for job, seconds in await conn.execute(
            _DURATIONS, {"jobs": list(jobs), "recent": recent}
        ):
            if seconds is not None and seconds > 0:
                found[job].append(float(seconds))

    return found


@dataclass(frozen=True)
class Backlog:
    """Remaining work of one instance: queued runs due now, and the expected
    seconds of every queued run plus what its runs in flight have left."""

    due: int
    work: float


async def backlog(db: Database) -> dict[str, Backlog]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                """
                SELECT instance_id,
                       count(*) FILTER (WHERE state = 'queued'
                                        AND not_before <= now()) AS due,
                       sum(CASE WHEN state = 'queued' THEN expected_seconds
                           ELSE greatest(0, expected_seconds - extract(epoch FROM
                                now() - coalesce(submitted_at, claimed_at, now())))
                           END) AS work
                FROM runs
                WHERE state = 'queued'
                   OR state = ANY(CAST(:slot_states AS text[]))
                GROUP BY instance_id
                """
            ),
            {"slot_states": sorted(state.value for state in SLOT_STATES)},
        )
        return {row.instance_id: Backlog(row.due, float(row.work or 0)) for row in rows}


async def refresh_expectations(db: Database, expected: dict[str, float]) -> int:
    """Update queued runs whose job's expected run time moved by over 5 %."""
    if not expected:
        return 0

    async with db.begin() as conn:
        result = await conn.execute(
            text(
                """
                UPDATE runs r SET expected_seconds = e.seconds
                FROM unnest(CAST(:jobs AS text[]), CAST(:seconds AS float8[]))
                     AS e(job, seconds)
                WHERE r.job = e.job AND r.state = 'queued'
                  AND abs(r.expected_seconds - e.seconds) > 0.05 * e.seconds
                """
            ),
            {"jobs": list(expected), "seconds": list(expected.values())},
        )
        return int(result.rowcount)
