"""Cancel, shutdown and result files, through the dispatcher and the simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from scheduler.dispatcher import cancel_run
from scheduler.errors import InvalidInput, NotFound
from scheduler.store import Database
from scheduler.store.models import leases, result_files, runs
from tests.support.harness import harness, settings_for

LONG = {"duration": "10h", "duration_sigma": 0}


async def _run(db: Database, run_id: int) -> dict[str, object]:
    async with db.connect() as conn:
        row = (await conn.execute(select(runs).where(runs.c.id == run_id))).one()
        return dict(row._mapping)


async def test_cancel_queued_run_at_once(db: Database) -> None:
    """A queued run is cancelled without a word to AMC."""
    async with harness(db, settings_for()) as rig:
        (result,) = await rig.enqueue_windows("b1-job", 1)
        dispatcher = rig.start_dispatcher()
        await rig.stop_dispatchers()
        cancelled = await cancel_run(dispatcher.rt, result.run.id)
        stats = rig.simulator.stats()

    assert cancelled.state == "cancelled"
    assert stats["requests"]["cancel"] == 0
    assert (await rig.history(result.run.id))[-1] == (
        "queued",
        "cancelled",
        "cancelled",
    )


async def test_cancel_running_run_at_amc(db: Database) -> None:
    """A submitted run is cancelled at AMC with PUT, then marked cancelled."""
    async with harness(db, settings_for(simulator=LONG)) as rig:
        (result,) = await rig.enqueue_windows("b1-job", 1)
        dispatcher = rig.start_dispatcher()

        async def in_flight() -> bool:
            return (await _run(db, result.run.id))["state"] in ("pending", "running")

        await rig.wait_for(in_flight)
        cancelled = await cancel_run(dispatcher.rt, result.run.id)
        executions = rig.simulator.executions()

    assert cancelled.state == "cancelled"
    assert [e["status"] for e in executions] == ["CANCELLED"]
    with pytest.raises(InvalidInput, match="already cancelled"):
        await cancel_run(dispatcher.rt, result.run.id)

    with pytest.raises(NotFound):
        await cancel_run(dispatcher.rt, 999_999)


async def test_cancel_at_amc_by_someone_else_is_recorded(db: Database) -> None:
    """An execution cancelled outside the scheduler ends its run as cancelled."""
    async with harness(db, settings_for(simulator=LONG)) as rig:
        (result,) = await rig.enqueue_windows("b1-job", 1)
        rig.start_dispatcher()

        async def execution_id() -> str | None:
            value = (await _run(db, result.run.id))["execution_id"]
            return value if isinstance(value, str) else None

        await rig.wait_for(execution_id)
        rig.simulator.state.cancel("amcb1", str(await execution_id()))
        states = await rig.wait_until_done()

    assert states == {"cancelled": 1}
    assert (await _run(db, result.run.id))["reason"] == "cancelled_at_amc"


async def test_shutdown_leaves_executions_to_the_next_start(db: Database) -> None:
    """Stopping lets calls finish, releases leases; a new process finishes the runs."""
    settings = settings_for(simulator={"duration": "2h"})
    async with harness(db, settings) as rig:
        await rig.enqueue_windows("b1-job", 5)
        rig.start_dispatcher("first")

        async def all_submitted() -> bool:
            states = await rig.states()
            return sum(states.get(s, 0) for s in ("pending", "running")) == 5

        await rig.wait_for(all_submitted)
        await asyncio.wait_for(rig.stop_dispatchers(), timeout=15)
        async with db.connect() as conn:
            held = (await conn.execute(select(leases))).all()
            submitting = (
                await conn.execute(
                    select(runs.c.id).where(runs.c.state == "submitting")
                )
            ).all()

        assert held == []
        assert submitting == []
        rig.start_dispatcher("second")
        states = await rig.wait_until_done()
        stats = rig.simulator.stats()

    assert states == {"succeeded": 5}
    assert stats["duplicates"] == 0
    assert stats["executions"]["total"] == 5


async def test_result_files_are_downloaded(db: Database, tmp_path: Path) -> None:
    """After SUCCEEDED the files land under results/<job>/<run id>/ and in history."""
    settings = settings_for(results={"dir": str(tmp_path / "results")})
    async with harness(db, settings) as rig:
        (result,) = await rig.enqueue_windows("b1-job", 1)
        rig.start_dispatcher()

        async def downloaded() -> bool:
            return (await _run(db, result.run.id))["results_state"] == "done"

        await rig.wait_for(downloaded)
        history = await rig.history(result.run.id)

    folder = tmp_path / "results" / "b1-job" / str(result.run.id)
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2
    assert any(name.endswith(".csv") for name in files)
    assert all((folder / name).stat().st_size > 0 for name in files)
    assert history[-1] == ("succeeded", "succeeded", "results_downloaded")
    async with db.connect() as conn:
        rows = (await conn.execute(select(result_files))).all()

    assert sorted(Path(row.path).name for row in rows) == files


async def test_cancel_during_the_create_cancels_at_amc_after_it(db: Database) -> None:
    """A run cancelled mid-create is flagged, then cancelled at AMC once created."""
    from scheduler.amc.simulator import FaultOptions

    async with harness(db, settings_for(simulator=LONG)) as rig:
        rig.simulator.set_faults(FaultOptions(slow_rate=1.0, slow_by=1.0))
        (result,) = await rig.enqueue_windows("b1-job", 1)
        dispatcher = rig.start_dispatcher()

        async def submitting() -> bool:
            return (await _run(db, result.run.id))["state"] == "submitting"

        await rig.wait_for(submitting)
        flagged = await cancel_run(dispatcher.rt, result.run.id)
        assert flagged.state == "submitting"
        assert flagged.cancel_requested
        states = await rig.wait_until_done()
        executions = rig.simulator.executions()

    assert states == {"cancelled": 1}
    assert [e["status"] for e in executions] == ["CANCELLED"]
