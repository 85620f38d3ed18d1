from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, update

from scheduler.store.engine import Database
from scheduler.store.models import (
    RunState,
    attempts,
    events,
    external_executions,
    runs,
)
from scheduler.store.polls import backlog
from scheduler.store.queue import (
    AccountLimits,
    InstanceLimit,
    admit,
    claim_expired_submissions,
    enqueue,
    renew_submission_leases,
)
from scheduler.store.records import RunRecord
from scheduler.store.transitions import (
    Observation,
    Outcome,
    Pause,
    finish,
    record_observation,
    record_submitted,
    requeue,
)
from tests.support.runs import new_run

ACCOUNT = AccountLimits(
    "ACC1", 15, (InstanceLimit("amc1", 10), InstanceLimit("amc2", 10))
)


async def held(db: Database) -> dict[str, int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(runs.c.instance_id, func.count())
            .where(runs.c.state.in_(["submitting", "pending", "running"]))
            .group_by(runs.c.instance_id)
        )
        return dict(rows.all())


async def history(db: Database, run_id: int) -> list[tuple[str | None, str, str]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(events.c.from_state, events.c.to_state, events.c.reason)
            .where(events.c.run_id == run_id)
            .order_by(events.c.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_enqueue_dedupes_live_runs(db: Database) -> None:
    """The same job, window and parameters while live returns the existing run."""
    first, again = await enqueue(db, [new_run(window="2026-05-01T00:00:00")] * 2)
    assert first.created
    assert not again.created
    assert again.run.id == first.run.id
    assert await history(db, first.run.id) == [(None, "queued", "enqueued")]

    other = await enqueue(
        db, [new_run(window="2026-05-01T00:00:00", parameterValues={"k": 1})]
    )
    assert other[0].created


async def test_a_failed_run_does_not_block_a_new_one(db: Database) -> None:
    """After failing, the same key can be enqueued again as a new run."""
    (first,) = await enqueue(db, [new_run(window="2026-05-02T00:00:00")])
    await finish(db, first.run, RunState.FAILED, reason="invalid_request")
    (second,) = await enqueue(db, [new_run(window="2026-05-02T00:00:00")])
    assert second.created
    assert second.run.id != first.run.id


async def test_admission_respects_instance_and_account_limits(db: Database) -> None:
    """Claims stop at 10 per instance and 15 for the account."""
    await enqueue(
        db, [new_run("amc1") for _ in range(12)] + [new_run("amc2") for _ in range(12)]
    )
    admission = await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=100)
    assert len(admission.claimed) == 15
    counts = await held(db)
    assert counts["amc1"] <= 10
    assert counts["amc2"] <= 10
    again = await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=100)
    assert again.claimed == []
    assert again.account_free == 0


async def test_a_saturated_instance_does_not_block_the_others(db: Database) -> None:
    """Full instances are filtered before the claim's limit."""
    await enqueue(db, [new_run("amc1", priority=9) for _ in range(40)])
    await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=10)
    await enqueue(db, [new_run("amc2") for _ in range(3)])
    admission = await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=3)
    assert {r.instance_id for r in admission.claimed} == {"amc2"}
    assert len(admission.claimed) == 3


async def test_external_executions_take_slots(db: Database) -> None:
    """Executions started outside the scheduler count against both limits."""
    async with db.begin() as conn:
        await conn.execute(
            insert(external_executions),
            [
                {
                    "execution_id": f"ui-{n}",
                    "account_id": "ACC1",
                    "instance_id": "amc1",
                    "status": "RUNNING",
                    "in_flight": True,
                }
                for n in range(8)
            ],
        )

    await enqueue(db, [new_run("amc1") for _ in range(5)])
    admission = await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=100)
    assert len(admission.claimed) == 2
    assert admission.held == {"amc1": 8}


async def test_concurrent_admitters_never_exceed_the_limit(
    db: Database, database_url: str
) -> None:
    """Admitters racing on one account are serialised by the advisory lock."""
    await enqueue(db, [new_run(f"amc{1 + n % 2}") for n in range(60)])
    other = Database(database_url, Path("unused"))
    await other.open()
    try:
        results = await asyncio.gather(
            *(
                admit(d, ACCOUNT, owner=f"w{n}", lease_seconds=60, max_claims=100)
                for n, d in enumerate([db, other] * 4)
            )
        )
    finally:
        await other.close()

    assert sum(len(r.claimed) for r in results) == 15
    assert sum((await held(db)).values()) == 15


async def test_pauses_hold_admission(db: Database) -> None:
    """A paused instance is skipped; a paused account admits nothing."""
    await enqueue(db, [new_run("amc1") for _ in range(3)] + [new_run("amc2")])
    admission = await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=1)
    (run,) = admission.claimed
    await requeue(
        db,
        run,
        owner="w1",
        delay=0,
        reason="limit_reached",
        pause=Pause("instance", run.instance_id, 60, "limit"),
    )
    admission = await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=10)
    assert run.instance_id not in {r.instance_id for r in admission.claimed}
    assert admission.claimed


async def test_lease_checked_transitions(db: Database) -> None:
    """Only the lease owner can record the submission; the chain is complete."""
    await enqueue(db, [new_run()])
    (run,) = (
        await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=1)
    ).claimed
    now = datetime.now(UTC)
    assert (
        await record_submitted(
            db,
            run,
            owner="w2",
            execution_id="e1",
            amc_status="PENDING",
            amc_create_time=now,
        )
        is None
    )
    pending = await record_submitted(
        db,
        run,
        owner="w1",
        execution_id="e1",
        amc_status="PENDING",
        amc_create_time=now,
    )
    assert pending is not None
    assert pending.state == "pending"
    assert pending.attempt == 1
    assert pending.lease_owner is None

    running = await record_observation(
        db, Observation(pending, "RUNNING"), Outcome(RunState.RUNNING, "status_changed")
    )
    assert running is not None
    done = await record_observation(
        db,
        Observation(running, "SUCCEEDED", amc_end_time=now + timedelta(minutes=20)),
        Outcome(RunState.SUCCEEDED, "succeeded"),
    )
    assert done is not None
    assert done.state == "succeeded"
    assert done.finished_at is not None
    assert await history(db, run.id) == [
        (None, "queued", "enqueued"),
        ("queued", "submitting", "admitted"),
        ("submitting", "pending", "submitted"),
        ("pending", "running", "status_changed"),
        ("running", "succeeded", "succeeded"),
    ]
    async with db.connect() as conn:
        attempt = (await conn.execute(select(attempts))).one()

    assert attempt.outcome == "succeeded"
    assert attempt.amc_end_time == now + timedelta(minutes=20)


async def test_retry_after_failure_frees_the_slot(db: Database) -> None:
    """A retryable failure requeues the run with its attempt closed."""
    await enqueue(db, [new_run()])
    (run,) = (
        await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=1)
    ).claimed
    pending = await record_submitted(
        db,
        run,
        owner="w1",
        execution_id="e1",
        amc_status="PENDING",
        amc_create_time=None,
    )
    assert pending is not None
    queued = await record_observation(
        db,
        Observation(pending, "FAILED", reason="Internal error"),
        Outcome(
            RunState.QUEUED, "execution_failed", retry_delay=0, message="Internal error"
        ),
    )
    assert queued is not None
    assert queued.state == "queued"
    assert queued.execution_id is None
    assert queued.attempt == 1
    assert await held(db) == {}
    (again,) = (
        await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=1)
    ).claimed
    second = await record_submitted(
        db,
        again,
        owner="w1",
        execution_id="e2",
        amc_status="PENDING",
        amc_create_time=None,
    )
    assert second is not None
    assert second.attempt == 2


async def test_expired_submissions_are_taken_over_once(db: Database) -> None:
    """A crashed owner's lease expires; one rescuer takes it, its owner can't finish."""
    await enqueue(db, [new_run()])
    (run,) = (
        await admit(db, ACCOUNT, owner="dead", lease_seconds=60, max_claims=1)
    ).claimed
    assert await claim_expired_submissions(db, "rescuer", 60) == []
    async with db.begin() as conn:
        await conn.execute(
            update(runs).values(lease_expires_at=func.now() - timedelta(seconds=1))
        )

    taken = await claim_expired_submissions(db, "rescuer", 60)
    assert [(r.id, previous) for r, previous in taken] == [(run.id, "dead")]
    assert await claim_expired_submissions(db, "other", 60) == []
    assert (
        await record_submitted(
            db,
            run,
            owner="dead",
            execution_id="e1",
            amc_status="PENDING",
            amc_create_time=None,
        )
        is None
    )
    assert await renew_submission_leases(db, "rescuer", 60) == 1


async def test_requeue_keeps_the_earliest_lookup(db: Database) -> None:
    """lookup_since only ever moves earlier, so no ambiguous create is forgotten."""
    await enqueue(db, [new_run()])
    early = datetime(2026, 1, 1, tzinfo=UTC)
    (run,) = (
        await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=1)
    ).claimed
    first = await requeue(
        db, run, owner="w1", delay=0, reason="transient_error", lookup_since=early
    )
    assert first is not None
    (run,) = (
        await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=1)
    ).claimed
    second = await requeue(
        db,
        run,
        owner="w1",
        delay=0,
        reason="transient_error",
        lookup_since=early + timedelta(days=1),
    )
    assert second is not None
    assert second.lookup_since == early


async def test_cancel_of_queued_run(db: Database) -> None:
    """A queued run is cancelled at once, with its event."""
    (result,) = await enqueue(db, [new_run()])
    cancelled = await finish(db, result.run, RunState.CANCELLED, reason="cancelled")
    assert isinstance(cancelled, RunRecord)
    assert cancelled.state == "cancelled"
    assert await finish(db, result.run, RunState.CANCELLED, reason="cancelled") is None


async def test_backlog_counts_queued_work_and_what_runs_in_flight_have_left(
    db: Database,
) -> None:
    """An instance's remaining work: every queued run's expected seconds, plus
    the rest of each run in flight (none for one past its expectation)."""
    await enqueue(
        db,
        [
            new_run("amc1", expected_seconds=1000.0),
            new_run("amc1", expected_seconds=600.0),
            new_run("amc2", expected_seconds=300.0),
        ],
    )
    (first,) = (
        await admit(db, ACCOUNT, owner="w1", lease_seconds=60, max_claims=1)
    ).claimed
    assert first.expected_seconds == 1000.0
    submitted = await record_submitted(
        db,
        first,
        owner="w1",
        execution_id="e1",
        amc_status="RUNNING",
        amc_create_time=datetime.now(UTC) - timedelta(seconds=400),
    )
    assert submitted is not None
    overdue = await enqueue(db, [new_run("amc2", expected_seconds=100.0)])
    async with db.begin() as conn:
        await conn.execute(
            update(runs)
            .where(runs.c.id == overdue[0].run.id)
            .values(
                state="running",
                execution_id="e2",
                submitted_at=datetime.now(UTC) - timedelta(hours=1),
            )
        )

    found = await backlog(db)
    assert found["amc1"].due == 1
    assert 1195.0 < found["amc1"].work <= 1200.0  # 600 queued + about 600 left
    assert found["amc2"].due == 1
    assert found["amc2"].work == 300.0
