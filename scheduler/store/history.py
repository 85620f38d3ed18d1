"""Reading history: runs with their events, attempts and result files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from .engine import Database
from .models import attempts, events, result_files, runs
from .records import RunRecord


@dataclass(frozen=True)
class RunPage:
    runs: list[RunRecord]
    next_before: int | None


async def list_runs(
    db: Database,
    *,
    job: str | None = None,
    states: Sequence[str] = (),
    limit: int = 50,
    before: int | None = None,
) -> RunPage:
    """Newest first; ``before`` (a run id) pages further back."""
    query = select(runs).order_by(runs.c.id.desc()).limit(limit + 1)
    if job is not None:
        query = query.where(runs.c.job == job)

    if states:
        query = query.where(runs.c.state.in_(list(states)))

    if before is not None:
        query = query.where(runs.c.id < before)

    async with db.connect() as conn:
        found = [RunRecord.from_row(row) for row in await conn.execute(query)]

    more = len(found) > limit
    page = found[:limit]
    return RunPage(page, page[-1].id if more and page else None)


async def get_run(db: Database, run_id: int) -> RunRecord | None:
    async with db.connect() as conn:
        row = (await conn.execute(select(runs).where(runs.c.id == run_id))).first()
        return RunRecord.from_row(row) if row is not None else None


@dataclass(frozen=True)
class RunDetail:
    run: RunRecord
    events: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    files: list[dict[str, Any]]


def _plain(row: Any) -> dict[str, Any]:
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in row._mapping.items()
    }


async def run_detail(db: Database, run_id: int) -> RunDetail | None:
    async with db.connect() as conn:
        row = (await conn.execute(select(runs).where(runs.c.id == run_id))).first()
        if row is None:
            return None

        history = await conn.execute(
            select(events).where(events.c.run_id == run_id).order_by(events.c.id)
        )
        tries = await conn.execute(
            select(attempts)
            .where(attempts.c.run_id == run_id)
            .order_by(attempts.c.number)
        )
        files = await conn.execute(
            select(result_files)
            .where(result_files.c.run_id == run_id)
            .order_by(result_files.c.id)
        )
        return RunDetail(
            RunRecord.from_row(row),
            [_plain(e) for e in history],
            [_plain(a) for a in tries],
            [_plain(f) for f in files],
        )
