"""Read-side queries for health, metrics, the status page and the CLI."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import func, literal, select, union_all

from .engine import Database
from .models import SLOT_STATES, RunState, external_executions, runs


@dataclass(frozen=True)
class SlotUse:
    """Slots in use on one instance: the scheduler's runs and outside executions."""

    instance_id: str
    account_id: str
    ours: int
    external: int

    @property
    def in_flight(self) -> int:
        return self.ours + self.external


async def queue_counts(db: Database) -> dict[str, int]:
    """The number of runs in each state, every state present."""
    counts = {state.value: 0 for state in RunState}
    async with db.connect() as conn:
        rows = await conn.execute(
            select(runs.c.state, func.count()).group_by(runs.c.state)
        )
        for state, count in rows:
            counts[state] = count

    return counts


async def slot_use(db: Database) -> dict[str, SlotUse]:
    """Slots held per instance, counted from the rows that hold them."""
    ours = (
        select(
            runs.c.instance_id,
            runs.c.account_id,
            func.count().label("ours"),
            literal(0).label("external"),
        )
        .where(runs.c.state.in_([s.value for s in SLOT_STATES]))
        .group_by(runs.c.instance_id, runs.c.account_id)
    )
    external = (
        select(
            external_executions.c.instance_id,
            external_executions.c.account_id,
            literal(0).label("ours"),
            func.count().label("external"),
        )
        .where(external_executions.c.in_flight)
        .group_by(external_executions.c.instance_id, external_executions.c.account_id)
    )
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    async with db.connect() as conn:
        for instance_id, account_id, n_ours, n_external in await conn.execute(
            union_all(ours, external)
        ):
            entry = totals[(instance_id, account_id)]
            entry[0] += n_ours
            entry[1] += n_external

    return {
        instance_id: SlotUse(instance_id, account_id, n_ours, n_external)
        for (instance_id, account_id), (n_ours, n_external) in totals.items()
    }
