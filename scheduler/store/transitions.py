"""Every change of a run's state, each with its event in the same statement.

A change names the states it expects the run to be in and, for leased
work, the lease owner; a run that moved on meanwhile is not touched and the
caller learns it from the ``None`` it gets back. The event (time, from, to,
reason, attempt, AMC execution id, AMC's message) is written by the same
statement as the change, so history never disagrees with the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from .engine import Database
from .models import (
    SLOT_STATES,
    TERMINAL_STATES,
    RunState,
    attempts,
    events,
    external_executions,
    runs,
)
from .queue import NOTIFY_CHANNEL, set_pause
from .records import RunRecord

NON_TERMINAL = tuple(state for state in RunState if state not in TERMINAL_STATES)


def seconds_from_now(seconds: float) -> ColumnElement[datetime]:
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, max(0.0, seconds))


@dataclass(frozen=True)
class Change:
    """One transition: from ``expect`` to ``to``, with column updates."""

    run_id: int
    expect: tuple[RunState, ...]
    to: RunState
    reason: str
    owner: str | None = None
    execution_id: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    message: str | None = None
    detail: Mapping[str, Any] | None = None


async def apply(
    conn: AsyncConnection, change: Change, worker_id: str | None = None
) -> RunRecord | None:
    """Apply ``change`` if the run is still where the change expects it."""
    conditions = [
        runs.c.id == change.run_id,
        runs.c.state.in_([state.value for state in change.expect]),
    ]
    if change.owner is not None:
        conditions.append(runs.c.lease_owner == change.owner)

    if change.execution_id is not None:
        conditions.append(runs.c.execution_id == change.execution_id)

    old = (
        select(runs.c.id, runs.c.state.label("from_state"))
        .where(and_(*conditions))
        .with_for_update()
        .cte("old")
    )
    values = {"state": change.to.value, "updated_at": func.now(), **change.values}
    changed = (
        update(runs)
        .where(runs.c.id == old.c.id)
        .values(**values)
        .returning(*runs.c, old.c.from_state)
        .cte("changed")
    )
    logged = (
        insert(events)
        .from_select(
            [
                "run_id",
                "from_state",
                "to_state",
                "reason",
                "attempt",
                "execution_id",
                "message",
                "detail",
                "worker_id",
            ],
            select(
                changed.c.id,
                changed.c.from_state,
                changed.c.state,
                literal(change.reason),
                changed.c.attempt,
                changed.c.execution_id,
                literal(change.message, type_=runs.c.message.type),
                bindparam("detail", change.detail, type_=JSONB),
                literal(worker_id, type_=runs.c.lease_owner.type),
            ),
        )
        .cte("logged")
    )
    result = await conn.execute(select(changed).add_cte(logged))
    row = result.first()
    return RunRecord.from_row(row) if row is not None else None


async def apply_one(
    db: Database, change: Change, worker_id: str | None = None
) -> RunRecord | None:
    async with db.begin() as conn:
        return await apply(conn, change, worker_id)


_RELEASED = {"lease_owner": None, "lease_expires_at": None, "claimed_at": None}


@dataclass(frozen=True)
class Pause:
    scope: str
    key: str
    seconds: float
    reason: str


async def record_submitted(
    db: Database,
    run: RunRecord,
    *,
    owner: str | None,
    execution_id: str,
    amc_status: str,
    amc_create_time: datetime | None,
    adopted: bool = False,
    expect: Sequence[RunState] = (RunState.SUBMITTING,),
    worker_id: str | None = None,
) -> RunRecord | None:
    """The create went through (or an existing execution was adopted)."""
    to = (
        RunState.RUNNING
        if amc_status in ("RUNNING", "PUBLISHING")
        else RunState.PENDING
    )
    async with db.begin() as conn:
        updated = await apply(
            conn,
            Change(
                run.id,
                tuple(expect),
                to,
                "adopted" if adopted else "submitted",
                owner=owner,
                values={
                    **_RELEASED,
                    "execution_id": execution_id,
                    "amc_status": amc_status,
                    "attempt": runs.c.attempt + 1,
                    "lookup_since": None,
                    "submitted_at": func.coalesce(amc_create_time, func.now()),
                    "started_at": func.now() if to is RunState.RUNNING else None,
                    "reason": None,
                    "message": None,
                },
                detail={"adopted": adopted},
            ),
            worker_id,
        )
        if updated is None:
            return None

        await conn.execute(
            insert(attempts).values(
                run_id=run.id,
                number=updated.attempt,
                execution_id=execution_id,
                adopted=adopted,
                amc_status=amc_status,
                amc_create_time=amc_create_time,
                submitted_at=func.coalesce(amc_create_time, func.now()),
                started_at=func.now() if to is RunState.RUNNING else None,
            )
        )
        # An execution counted as external until now is ours: stop counting it.
        await conn.execute(
            delete(external_executions).where(
                external_executions.c.execution_id == execution_id
            )
        )
        # Tells the instance's poller (in whichever process) when to look.
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {
                "channel": NOTIFY_CHANNEL,
                "payload": f"submitted:{run.instance_id}:{run.job}",
            },
        )

    return updated


async def requeue(
    db: Database,
    run: RunRecord,
    *,
    owner: str | None,
    delay: float,
    reason: str,
    message: str | None = None,
    lookup_since: datetime | None = None,
    pause: Pause | None = None,
    detail: Mapping[str, Any] | None = None,
    worker_id: str | None = None,
) -> RunRecord | None:
    """Back to the queue without using an attempt; optionally pause admission.

    ``lookup_since`` is kept (the earliest wins): while set, the next
    submission first looks for an execution created since then.
    """
    values: dict[str, Any] = {
        **_RELEASED,
        "not_before": seconds_from_now(delay),
        "reason": reason,
        "message": message,
    }
    if lookup_since is not None:
        values["lookup_since"] = func.least(
            func.coalesce(runs.c.lookup_since, lookup_since), lookup_since
        )

    async with db.begin() as conn:
        updated = await apply(
            conn,
            Change(
                run.id,
                (RunState.SUBMITTING,),
                RunState.QUEUED,
                reason,
                owner=owner,
                values=values,
                message=message,
                detail={"retry_in_seconds": round(delay, 3), **(detail or {})},
            ),
            worker_id,
        )
        if updated is not None and pause is not None:
            await set_pause(conn, pause.scope, pause.key, pause.seconds, pause.reason)

    return updated


async def finish(
    db: Database,
    run: RunRecord,
    to: RunState,
    *,
    reason: str,
    message: str | None = None,
    owner: str | None = None,
    expect: Sequence[RunState] = NON_TERMINAL,
    detail: Mapping[str, Any] | None = None,
    worker_id: str | None = None,
) -> RunRecord | None:
    """End a run (failed, cancelled or succeeded) from wherever it stands."""
    async with db.begin() as conn:
        updated = await apply(
            conn,
            Change(
                run.id,
                tuple(expect),
                to,
                reason,
                owner=owner,
                values={
                    **_RELEASED,
                    "finished_at": func.now(),
                    "reason": reason,
                    "message": message,
                },
                message=message,
                detail=detail,
            ),
            worker_id,
        )
        if updated is not None and updated.execution_id is not None:
            await _close_attempt(conn, updated, to.value, reason, None, None)

    return updated


async def _close_attempt(
    conn: AsyncConnection,
    run: RunRecord,
    outcome: str,
    reason: str | None,
    amc_status: str | None,
    amc_end_time: datetime | None,
) -> None:
    values: dict[str, Any] = {
        "outcome": outcome,
        "reason": reason,
        "finished_at": func.now(),
    }
    if amc_status is not None:
        values["amc_status"] = amc_status

    if amc_end_time is not None:
        values["amc_end_time"] = amc_end_time

    await conn.execute(
        update(attempts)
        .where(
            attempts.c.run_id == run.id,
            attempts.c.number == run.attempt,
            attempts.c.outcome.is_(None),
        )
        .values(**values)
    )


@dataclass(frozen=True)
class Observation:
    """What a poll learned about one in-flight run's execution."""

    run: RunRecord
    amc_status: str
    amc_end_time: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How an observation is recorded: the run's new state and why."""

    to: RunState
    reason: str
    retry_delay: float | None = None
    message: str | None = None


async def record_observation(
    db: Database,
    observation: Observation,
    outcome: Outcome,
    worker_id: str | None = None,
) -> RunRecord | None:
    """Move an in-flight run after its execution changed at AMC.

    A retry (``outcome.to`` queued) closes the attempt and frees the slot; the
    run keeps its history and its next attempt gets a new execution.
    """
    run = observation.run
    values: dict[str, Any] = {"amc_status": observation.amc_status}
    if outcome.to is RunState.RUNNING:
        values["started_at"] = func.coalesce(runs.c.started_at, func.now())
    elif outcome.to is RunState.QUEUED:
        values.update(
            execution_id=None,
            not_before=seconds_from_now(outcome.retry_delay or 0.0),
            reason=outcome.reason,
            message=outcome.message,
            results_state=None,
        )
    elif outcome.to.terminal:
        values.update(
            finished_at=func.now(),
            reason=None if outcome.to is RunState.SUCCEEDED else outcome.reason,
            message=outcome.message,
        )

    async with db.begin() as conn:
        updated = await apply(
            conn,
            Change(
                run.id,
                (RunState.PENDING, RunState.RUNNING),
                outcome.to,
                outcome.reason,
                execution_id=run.execution_id,
                values=values,
                message=outcome.message,
                detail={"amc_status": observation.amc_status},
            ),
            worker_id,
        )
        if updated is None:
            return None

        if outcome.to is RunState.RUNNING:
            await conn.execute(
                update(attempts)
                .where(attempts.c.run_id == run.id, attempts.c.number == run.attempt)
                .values(
                    amc_status=observation.amc_status,
                    started_at=func.coalesce(attempts.c.started_at, func.now()),
                )
            )
        elif outcome.to is RunState.QUEUED or outcome.to.terminal:
            closing = outcome.to.value if outcome.to.terminal else "failed"
            await _close_attempt(
                conn,
                run,
                closing,
                observation.reason,
                observation.amc_status,
                observation.amc_end_time,
            )

    return updated


async def touch_status(db: Database, run: RunRecord, amc_status: str) -> None:
    """Record a new AMC status that does not change the run's state."""
    async with db.begin() as conn:
        await conn.execute(
            update(runs)
            .where(runs.c.id == run.id, runs.c.execution_id == run.execution_id)
            .values(amc_status=amc_status, updated_at=func.now())
        )


async def request_cancel(db: Database, run_id: int) -> RunRecord | None:
    """Flag a run for cancellation; None when it is no longer in flight."""
    async with db.begin() as conn:
        result = await conn.execute(
            update(runs)
            .where(
                runs.c.id == run_id,
                runs.c.state.in_([s.value for s in SLOT_STATES]),
            )
            .values(cancel_requested=True, updated_at=func.now())
            .returning(*runs.c)
        )
        row = result.first()
        return RunRecord.from_row(row) if row is not None else None
