"""The dispatcher against the simulator, through the real client and Postgres."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import select

from scheduler.amc.simulator import FaultOptions
from scheduler.store import Database
from scheduler.store.models import attempts, runs
from scheduler.store.status import slot_use
from tests.support.harness import harness, settings_for


async def _run_rows(db: Database) -> list[dict[str, object]]:
    async with db.connect() as conn:
        rows = await conn.execute(select(runs).order_by(runs.c.id))
        return [dict(row._mapping) for row in rows]


async def test_drain_respects_every_limit_and_submits_once(db: Database) -> None:
    """200 runs over 3 instances in 2 accounts: limits held, all end, no duplicate."""
    async with harness(db, settings_for()) as rig:
        await rig.enqueue_windows("a1-job", 80)
        await rig.enqueue_windows("a2-job", 60)
        await rig.enqueue_windows("b1-job", 60)
        rig.start_dispatcher()
        states = await rig.wait_until_done()
        stats = rig.simulator.stats()

    assert states == {"succeeded": 200}
    assert stats["duplicates"] == 0
    assert stats["limit_violations"] == 0
    assert stats["rejected_creates"]["limit"] == 0
    instances = stats["max_concurrency"]["instances"]
    assert max(instances.values()) <= 10
    assert instances["amcb1"] == 10
    accounts = stats["max_concurrency"]["accounts"]
    assert accounts["ENTITYA"] == 12
    assert stats["executions"]["total"] == 200
    for row in await _run_rows(db):
        assert row["attempt"] == 1
        assert row["lease_owner"] is None


async def test_ui_executions_take_slots(db: Database) -> None:
    """Executions started outside are learned from the list call and counted."""
    settings = settings_for(simulator={"duration": "20m"})
    async with harness(db, settings) as rig:
        # Eight long executions "from the UI" on amca1 (limit 10).
        rig.simulator.add_ui_executions("amca1", 8, duration=4 * 3600)
        rig.start_dispatcher()

        async def external_seen() -> bool:
            use = await slot_use(db)
            return "amca1" in use and use["amca1"].external == 8

        await rig.wait_for(external_seen)
        await rig.enqueue_windows("a1-job", 30)
        states = await rig.wait_until_done()
        stats = rig.simulator.stats()

    assert states == {"succeeded": 30}
    assert stats["max_concurrency"]["instances"]["amca1"] <= 10
    assert stats["limit_violations"] == 0
    assert stats["duplicates"] == 0


async def test_limit_errors_are_retried_without_failing_runs(db: Database) -> None:
    """UI executions the dispatcher has not seen yet make AMC refuse; runs wait."""
    settings = settings_for(dispatcher={"poll_max": 30, "poll_min": 0.2})
    async with harness(db, settings) as rig:
        dispatcher = rig.start_dispatcher()

        async def polled_once() -> bool:
            state = dispatcher.poller.owned.get("amcb1")
            return state is not None and state.last_list_at is not None

        # Polled while idle, so the next poll is far off: the view goes stale.
        await rig.wait_for(polled_once)
        rig.simulator.add_ui_executions("amcb1", 10, duration=1200)
        await rig.enqueue_windows("b1-job", 5)
        states = await rig.wait_until_done()
        stats = rig.simulator.stats()

    assert states == {"succeeded": 5}
    assert stats["rejected_creates"]["limit"] >= 1
    assert stats["duplicates"] == 0
    assert stats["executions"]["by_origin"]["api"] == 5


async def _submitted_at_least(db: Database, n: int) -> bool:
    async with db.connect() as conn:
        rows = await conn.execute(select(attempts.c.id))
        return len(rows.all()) >= n


async def test_throttles_and_ambiguous_5xx_cause_no_failure_and_no_duplicate(
    db: Database,
) -> None:
    """Throttles are waited out; a 5xx after the create landed is adopted."""
    settings = settings_for()
    async with harness(db, settings) as rig:
        rig.simulator.set_faults(
            FaultOptions(
                throttle_rate=0.15,
                retry_after=0.05,
                server_error_rate=0.15,
                after_create_share=1.0,
                malformed_rate=0.05,
            )
        )
        await rig.enqueue_windows("a1-job", 40)
        await rig.enqueue_windows("a2-job", 20)
        rig.start_dispatcher()
        states = await rig.wait_until_done(within=90)
        stats = rig.simulator.stats()

    assert states == {"succeeded": 60}
    assert stats["faults"]["server_error"] > 0
    assert stats["faults"]["after_create"] > 0
    assert stats["faults"]["throttle"] > 0
    assert stats["duplicates"] == 0
    assert stats["executions"]["total"] == 60
    async with db.connect() as conn:
        adopted = (await conn.execute(select(attempts).where(attempts.c.adopted))).all()

    assert adopted, "an ambiguous create should have been adopted"


async def test_privacy_rejection_fails_its_run_once(db: Database) -> None:
    """The same window on one instance too often: failed with the reason, no loop."""
    jobs = [
        {"name": "first", "instance": "amcb1", "workflow_id": "wf_one"},
        {"name": "second", "instance": "amcb1", "workflow_id": "wf_two"},
    ]
    settings = settings_for(jobs=jobs, simulator={"privacy_repeats": 1})
    async with harness(db, settings) as rig:
        start = datetime(2026, 3, 1)
        await rig.enqueue_windows("first", 1, start=start)
        rig.start_dispatcher()
        await rig.wait_until_done()
        (second,) = await rig.enqueue_windows("second", 1, start=start)
        states = await rig.wait_until_done()
        stats = rig.simulator.stats()
        history = await rig.history(second.run.id)

    assert states == {"succeeded": 1, "failed": 1}
    assert stats["rejected_creates"]["privacy"] == 1
    assert history[-1] == ("submitting", "failed", "privacy_rejected")
    rows = {row["id"]: row for row in await _run_rows(db)}
    assert "too many workflows have already been run" in str(
        rows[second.run.id]["message"]
    )


async def test_failed_executions_are_retried_up_to_max_attempts(db: Database) -> None:
    """FAILED with a retryable reason: new attempts until max_attempts."""
    jobs = [
        {"name": "flaky", "instance": "amcb1", "workflow_id": "wf", "max_attempts": 2}
    ]
    settings = settings_for(jobs=jobs, simulator={"failure_rate": 1.0})
    async with harness(db, settings) as rig:
        (result,) = await rig.enqueue_windows("flaky", 1)
        rig.start_dispatcher()
        states = await rig.wait_until_done()
        history = await rig.history(result.run.id)
        stats = rig.simulator.stats()

    assert states == {"failed": 1}
    reasons = Counter(reason for _, _, reason in history)
    assert reasons["submitted"] == 2
    assert reasons["execution_failed"] == 1
    assert history[-1][2] == "attempts_exhausted"
    assert stats["executions"]["total"] == 2


async def test_two_dispatchers_share_the_work(db: Database, database_url: str) -> None:
    """Two dispatchers on one database: limits held, nothing submitted twice."""
    async with harness(db, settings_for()) as rig:
        await rig.enqueue_windows("a1-job", 50)
        await rig.enqueue_windows("a2-job", 50)
        await rig.enqueue_windows("b1-job", 50)
        first = rig.start_dispatcher("one")
        second = rig.start_dispatcher("two")
        states = await rig.wait_until_done()
        stats = rig.simulator.stats()
        assert first.poller.owned or second.poller.owned

    assert states == {"succeeded": 150}
    assert stats["duplicates"] == 0
    assert stats["max_concurrency"]["accounts"]["ENTITYA"] <= 12
    assert max(stats["max_concurrency"]["instances"].values()) <= 10
    assert stats["rejected_creates"]["limit"] == 0
