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
    TextClause,
    and_,
    bindparam,
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
    runs,
)
from .queue import NOTIFY_CHANNEL, set_pause, single_statement
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


def _change_sql(
    assignments: str,
    *also: str,
    guard: str = "",
    result: str = "SELECT * FROM changed",
) -> TextClause:
    """One transition as one statement: the run's change, its event and ``also``.

    Like ``apply``: the run changes only while it is in one of ``:expect``
    (and, when given, under ``:owner``'s lease or with ``:expect_execution``)
    and ``guard`` holds, and the statements in ``also`` (data-modifying CTEs,
    which always run) do their part only when it did.
    """
    extra = "".join(f", {cte}" for cte in also)
    return text(
        f"""
        WITH old AS (
            SELECT id, state AS from_state FROM runs
            WHERE id = :run_id AND state = ANY(CAST(:expect AS text[]))
              AND (CAST(:owner AS text) IS NULL OR lease_owner = :owner)
              AND (CAST(:expect_execution AS text) IS NULL
                   OR execution_id = :expect_execution)
              {guard}
            FOR UPDATE
        ), changed AS (
            UPDATE runs r
            SET state = :to, updated_at = now(), {assignments}
            FROM old WHERE r.id = old.id
            RETURNING r.*, old.from_state
        ), logged AS (
            INSERT INTO events (run_id, from_state, to_state, reason, attempt,
                                execution_id, message, detail, worker_id)
            SELECT id, from_state, state, CAST(:reason AS text), attempt,
                   execution_id, CAST(:event_message AS text),
                   CAST(:detail AS jsonb), CAST(:worker_id AS text)
            FROM changed
        ){extra}
        {result}
        """
    ).bindparams(bindparam("detail", type_=JSONB))


def _change_params(
    run_id: int,
    expect: Sequence[RunState],
    to: RunState,
    reason: str,
    *,
    owner: str | None = None,
    expect_execution: str | None = None,
    event_message: str | None = None,
    detail: Mapping[str, Any] | None = None,
    worker_id: str | None = None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "expect": [state.value for state in expect],
        "to": to.value,
        "reason": reason,
        "owner": owner,
        "expect_execution": expect_execution,
        "event_message": event_message,
        "detail": None if detail is None else dict(detail),
        "worker_id": worker_id,
    }


# The run gets its execution and a new attempt number; the attempt is opened;
# an execution counted as external until now is ours and stops counting; the
# instance's poller (in whichever process) learns when to look.
_SUBMITTED = _change_sql(
    """lease_owner = NULL, lease_expires_at = NULL, claimed_at = NULL,
            execution_id = :execution_id, amc_status = :amc_status,
            attempt = r.attempt + 1, lookup_since = NULL,
            submitted_at = coalesce(CAST(:amc_create_time AS timestamptz), now()),
            started_at = CASE WHEN :to = 'running' THEN now() END,
            reason = NULL, message = NULL""",
    """opened AS (
            INSERT INTO attempts (run_id, number, execution_id, adopted, amc_status,
                                  amc_create_time, submitted_at, started_at)
            SELECT id, attempt, execution_id, CAST(:adopted AS boolean),
                   amc_status, CAST(:amc_create_time AS timestamptz),
                   submitted_at, started_at
            FROM changed
        )""",
    """adopted_external AS (
            DELETE FROM external_executions
            WHERE execution_id = :execution_id AND EXISTS (SELECT FROM changed)
        )""",
    # An execution belongs to one attempt: a create's answer that arrives after
    # the run's lookup adopted the execution (and maybe retried past it) is
    # not recorded a second time.
    guard="AND NOT EXISTS (SELECT FROM attempts WHERE execution_id = :execution_id)",
    result="SELECT changed.*, pg_notify(:channel, :payload) AS notified FROM changed",
)


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
    """The create went through (or an existing execution was adopted).

    None when the run is not as expected, or when an attempt already owns the
    execution (``execution_owner`` tells which run).
    """
    to = (
        RunState.RUNNING
        if amc_status in ("RUNNING", "PUBLISHING")
        else RunState.PENDING
    )
    params = _change_params(
        run.id,
        expect,
        to,
        "adopted" if adopted else "submitted",
        owner=owner,
        detail={"adopted": adopted},
        worker_id=worker_id,
    )
    params.update(
        execution_id=execution_id,
        amc_status=amc_status,
        amc_create_time=amc_create_time,
        adopted=adopted,
        channel=NOTIFY_CHANNEL,
        payload=f"submitted:{run.instance_id}:{run.job}",
    )
    async with single_statement(db) as conn:
        row = (await conn.execute(_SUBMITTED, params)).first()

    return RunRecord.from_row(row) if row is not None else None


async def execution_owner(db: Database, execution_id: str) -> int | None:
    """The run one of whose attempts owns ``execution_id``, if any."""
    async with db.connect() as conn:
        owner = await conn.scalar(
            select(attempts.c.run_id).where(attempts.c.execution_id == execution_id)
        )

    return None if owner is None else int(owner)


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
            await _close_attempt(conn, updated, to.value, reason)

    return updated


async def _close_attempt(
    conn: AsyncConnection, run: RunRecord, outcome: str, reason: str | None
) -> None:
    """Close the run's open attempt (``record_observation`` closes its own)."""
    await conn.execute(
        update(attempts)
        .where(
            attempts.c.run_id == run.id,
            attempts.c.number == run.attempt,
            attempts.c.outcome.is_(None),
        )
        .values(outcome=outcome, reason=reason, finished_at=func.now())
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


# The attempt a run in flight owns: ``:attempt`` is the number it had when
# observed, so an attempt the run has since moved past is left alone.
_CLOSE_ATTEMPT = """closed AS (
            UPDATE attempts
            SET outcome = :outcome, reason = CAST(:attempt_reason AS text),
                finished_at = now(), amc_status = :amc_status,
                amc_end_time = coalesce(CAST(:amc_end_time AS timestamptz),
                                        amc_end_time)
            WHERE run_id = :run_id AND number = :attempt AND outcome IS NULL
              AND EXISTS (SELECT FROM changed)
        )"""

_OBSERVED_RUNNING = _change_sql(
    "amc_status = :amc_status, started_at = coalesce(r.started_at, now())",
    """started AS (
            UPDATE attempts
            SET amc_status = :amc_status, started_at = coalesce(started_at, now())
            WHERE run_id = :run_id AND number = :attempt
              AND EXISTS (SELECT FROM changed)
        )""",
)
_OBSERVED_RETRY = _change_sql(
    """amc_status = :amc_status, execution_id = NULL,
            not_before = now() + make_interval(secs => :retry_delay),
            reason = :run_reason, message = :message, results_state = NULL""",
    _CLOSE_ATTEMPT,
)
_OBSERVED_END = _change_sql(
    """amc_status = :amc_status, finished_at = now(),
            reason = :run_reason, message = :message""",
    _CLOSE_ATTEMPT,
)
_OBSERVED_OTHER = _change_sql("amc_status = :amc_status")


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
    params = _change_params(
        run.id,
        (RunState.PENDING, RunState.RUNNING),
        outcome.to,
        outcome.reason,
        expect_execution=run.execution_id,
        event_message=outcome.message,
        detail={"amc_status": observation.amc_status},
        worker_id=worker_id,
    )
    params.update(
        amc_status=observation.amc_status,
        attempt=run.attempt,
        message=outcome.message,
        attempt_reason=observation.reason,
        amc_end_time=observation.amc_end_time,
    )
    if outcome.to is RunState.RUNNING:
        statement = _OBSERVED_RUNNING
    elif outcome.to is RunState.QUEUED:
        statement = _OBSERVED_RETRY
        params.update(
            retry_delay=max(0.0, float(outcome.retry_delay or 0.0)),
            run_reason=outcome.reason,
            outcome="failed",
        )
    elif outcome.to.terminal:
        statement = _OBSERVED_END
        params.update(
            run_reason=None if outcome.to is RunState.SUCCEEDED else outcome.reason,
            outcome=outcome.to.value,
        )
    else:
        statement = _OBSERVED_OTHER

    async with single_statement(db) as conn:
        row = (await conn.execute(statement, params)).first()

    return RunRecord.from_row(row) if row is not None else None


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
