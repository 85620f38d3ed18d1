"""The dispatcher: admission under the parallel limits, submit, retry, recover.

Loops, each surviving a failed iteration:

* admission: per account, claim runs into free slots (``store.queue.admit``)
  and submit each; woken by NOTIFY from enqueuers and by freed slots, with a
  polling backstop;
* leases: keep this process's `submitting` leases alive, share the
  per-instance poll leases fairly among live processes, and take over
  submissions whose process died (looking at AMC before submitting again);
* polling: see ``poller``;
* upkeep: heartbeat, run-time history, backlog, pruning.

No run is submitted twice: a run is `submitting` under a lease before its
create call, and after an ambiguous create or a lost process the run keeps a
``lookup_since`` until AMC has been asked whether the execution exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from .amc.client import AmcClient
from .config import Settings
from .errors import InvalidInput, NotFound, StoreError
from .logs import get_logger
from .metrics import Metrics
from .poller import Poller, cancel_in_flight
from .polling import fit
from .results import ResultsFetcher
from .runtime import Runtime, every
from .store import Database
from .store.models import RunState, runs
from .store.polls import (
    acquire_leases,
    backlog,
    heartbeat,
    live_workers,
    prune_external,
    recent_durations,
    refresh_expectations,
    release_all_leases,
    release_leases,
)
from .store.queue import (
    NOTIFY_CHANNEL,
    admit,
    claim_expired_submissions,
    renew_submission_leases,
)
from .store.records import RunRecord
from .store.transitions import (
    finish,
    request_cancel,
)
from .submitter import Submitter

log = get_logger(__name__)

# The backlog per instance (which orders admission) is read again after this
# many admission intervals: 10 s with the default interval of 5 s.
BACKLOG_INTERVALS = 2.0
UPKEEP_PERIOD = 15.0
LIST_PAGE = 100


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        client: AmcClient,
        settings: Settings,
        worker_id: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.rt = Runtime(db, client, settings, worker_id, metrics or Metrics())
        self.results = ResultsFetcher(self.rt)
        self.poller = Poller(self.rt, on_succeeded=self.results.due)
        self.submitter = Submitter(self.rt, self.poller)
        self._submitting: dict[int, asyncio.Task[None]] = {}
        self._beat: float | None = None
        self._accepting = True
        self._backlog_at = 0.0
        self._cursor = 0

    # What the service sees

    def seconds_since_beat(self) -> float | None:
        return None if self._beat is None else time.monotonic() - self._beat

    def reload(self, settings: Settings) -> None:
        self.rt.reload(settings)
        self.wake()

    def wake(self) -> None:
        self.rt.wake_admission.set()

    @property
    def submitting(self) -> int:
        return len(self._submitting)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every loop until ``stop`` is set, then shut down gracefully."""
        loops = [
            asyncio.create_task(self._admission_loop(stop), name="admission"),
            asyncio.create_task(self._lease_loop(stop), name="leases"),
            asyncio.create_task(self._upkeep_loop(stop), name="upkeep"),
            asyncio.create_task(self._listen_loop(stop), name="listen"),
            asyncio.create_task(self.poller.run(stop), name="poller"),
        ]
        await stop.wait()
        self._accepting = False
        log.info("dispatcher_stopping", submitting=len(self._submitting))
        await self._drain()
        for task in loops:
            task.cancel()

        await asyncio.gather(*loops, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await release_all_leases(self.rt.db, self.rt.worker_id)

        log.info("dispatcher_stopped")

    async def _drain(self) -> None:
        """Let in-flight calls finish within the bound, then cancel the rest."""
        timeout = self.rt.config.shutdown_timeout.total_seconds()
        pending = set(self._submitting.values()) | set(self.rt.tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()

            if late:
                await asyncio.wait(late, timeout=5)

    # Loops

    async def _pause(
        self, stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None
    ) -> None:
        waiters = [asyncio.create_task(stop.wait())]
        if wake is not None:
            waiters.append(asyncio.create_task(wake.wait()))

        try:
            await asyncio.wait(
                waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _repeat(
        self,
        name: str,
        stop: asyncio.Event,
        step: Callable[[], Awaitable[Any]],
        period: Callable[[], float],
        wake: asyncio.Event | None = None,
    ) -> None:
        while not stop.is_set():
            if wake is not None:
                wake.clear()

            try:
                await step()
            except Exception as exc:
                self.rt.metrics.loop_failures.labels(name).inc()
                log.warning("loop_failed", loop=name, error=str(exc))

            await self._pause(stop, every(period()), wake)

    async def _admission_loop(self, stop: asyncio.Event) -> None:
        await self._repeat(
            "admission",
            stop,
            self._admit_pass,
            lambda: self.rt.config.admit_interval.total_seconds(),
            self.rt.wake_admission,
        )

    async def _lease_loop(self, stop: asyncio.Event) -> None:
        await self._repeat(
            "leases",
            stop,
            self._lease_pass,
            lambda: self.rt.config.lease.total_seconds() / 3,
        )

    async def _upkeep_loop(self, stop: asyncio.Event) -> None:
        await self._repeat("upkeep", stop, self._upkeep_pass, lambda: UPKEEP_PERIOD)

    # Admission

    async def _admit_pass(self) -> None:
        self._beat = time.monotonic()
        if not self._accepting:
            return

        rt = self.rt
        ttl = BACKLOG_INTERVALS * rt.config.admit_interval.total_seconds()
        if time.monotonic() - self._backlog_at > ttl:
            rt.backlog = await backlog(rt.db)
            self._backlog_at = time.monotonic()

        capacity = rt.config.submit_concurrency - len(self._submitting)
        accounts = list(rt.topology.accounts)
        if not accounts or capacity <= 0:
            return

        # Start each pass at the next account, so none is always served last.
        self._cursor = (self._cursor + 1) % len(accounts)
        for account_id in accounts[self._cursor :] + accounts[: self._cursor]:
            if capacity <= 0:
                break

            admission = await admit(
                rt.db,
                rt.topology.limits(account_id),
                owner=rt.worker_id,
                lease_seconds=rt.config.lease.total_seconds(),
                max_claims=capacity,
                backlog={i: b.work for i, b in rt.backlog.items()},
                aging_seconds=rt.config.aging.total_seconds(),
            )
            for run in admission.claimed:
                log.debug(
                    "run_admitted",
                    run_id=run.id,
                    job=run.job,
                    instance_id=run.instance_id,
                    account_id=account_id,
                    account_held=admission.account_held,
                )
                self._start_submit(run)

            capacity -= len(admission.claimed)

    def _start_submit(self, run: RunRecord) -> None:
        self._track(
            run.id, self.rt.spawn(self.submitter.submit(run), f"submit:{run.id}")
        )

    def _track(self, run_id: int, task: asyncio.Task[None]) -> None:
        """Count a submission against capacity until it ends, then admit more."""
        self._submitting[run_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._submitting.pop(run_id, None)
            self.rt.wake_admission.set()

        task.add_done_callback(done)

    # Submit

    async def _lease_pass(self) -> None:
        rt = self.rt
        lease = rt.config.lease.total_seconds()
        await renew_submission_leases(
            rt.db, rt.worker_id, lease, list(self._submitting)
        )
        await self._share_poll_leases(lease)
        if not self._accepting:
            return

        for run, previous in await claim_expired_submissions(
            rt.db, rt.worker_id, lease
        ):
            log.warning(
                "submission_recovering",
                previous_owner=previous,
                run_id=run.id,
                job=run.job,
                instance_id=run.instance_id,
            )
            self._track(
                run.id, rt.spawn(self.submitter.recover(run), f"recover:{run.id}")
            )

    async def _share_poll_leases(self, lease: float) -> None:
        rt = self.rt
        names = {f"poll:{instance}": instance for instance in rt.topology.instance_ids}
        owned = [f"poll:{i}" for i in self.poller.owned]
        kept = await acquire_leases(
            rt.db, [n for n in owned if n in names], rt.worker_id, lease
        )
        for name in owned:
            if name not in kept:
                self.poller.drop(name.removeprefix("poll:"))

        fair = math.ceil(len(names) / await live_workers(rt.db, 3 * lease)) + 1
        free = [n for n in names if n not in kept]
        random.shuffle(free)
        room = fair - len(kept)
        if room > 0 and free:
            for name in await acquire_leases(rt.db, free[:room], rt.worker_id, lease):
                self.poller.take(names[name])
        elif room < -1:
            # More than a fair share: hand one back for another process to take.
            extra = sorted(kept)[0]
            await release_leases(rt.db, [extra], rt.worker_id)
            self.poller.drop(names[extra])

    # Upkeep

    async def _upkeep_pass(self) -> None:
        rt = self.rt
        await heartbeat(rt.db, rt.worker_id)
        jobs = [job.name for job in rt.settings.jobs]
        models = {}
        for job, durations in (await recent_durations(rt.db, jobs)).items():
            model = fit(durations)
            if model is not None:
                models[job] = model

        rt.models = models
        await refresh_expectations(rt.db, {job: m.median for job, m in models.items()})
        await prune_external(rt.db, 86400)
        await self.results.resume()

    async def _listen_loop(self, stop: asyncio.Event) -> None:
        """LISTEN for enqueues: a hint to admit now; the backstop is polling."""
        while not stop.is_set():
            try:
                async with self.rt.db.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver: Any = raw.driver_connection
                    await driver.add_listener(NOTIFY_CHANNEL, self._notified)
                    try:
                        while not stop.is_set() and not driver.is_closed():
                            await self._pause(stop, 5.0)
                    finally:
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(NOTIFY_CHANNEL, self._notified)
            except Exception as exc:
                log.debug("listen_failed", error=str(exc))

            await self._pause(stop, every(5.0))

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        if kind == "submitted":
            instance_id, _, job = rest.partition(":")
            self.poller.expect(instance_id, job)
        elif kind == "cancel":
            self.poller.poke(rest)
        else:
            self.rt.wake_admission.set()


async def cancel_run(rt: Runtime, run_id: int) -> RunRecord:
    """Cancel a run: at once when queued, at AMC (then here) when submitted.

    A run being submitted right now is flagged; its submitter cancels it at
    AMC as soon as the create returns.
    """
    async with rt.db.connect() as conn:
        row = (await conn.execute(select(runs).where(runs.c.id == run_id))).first()

    if row is None:
        raise NotFound(f"no run {run_id}")

    run = RunRecord.from_row(row)
    state = run.run_state
    if state.terminal:
        raise InvalidInput(f"run {run_id} is already {state.value}")

    if state is RunState.QUEUED:
        cancelled = await finish(
            rt.db,
            run,
            RunState.CANCELLED,
            reason="cancelled",
            expect=(RunState.QUEUED,),
            worker_id=rt.worker_id,
        )
        if cancelled is not None:
            log.info("run_cancelled", run_id=run_id, job=run.job, state_was="queued")
            return cancelled

        return await cancel_run(rt, run_id)

    if state is RunState.SUBMITTING:
        flagged = await request_cancel(rt.db, run_id)
        return flagged or await cancel_run(rt, run_id)

    ref = rt.topology.ref(run.account_id)
    if ref is None:
        raise InvalidInput(f"run {run_id}: account {run.account_id} is not configured")

    cancelled = await cancel_in_flight(rt, run, ref)
    if cancelled is None:
        flagged = await request_cancel(rt.db, run_id)
        return flagged or await cancel_run(rt, run_id)

    log.info("run_cancelled", run_id=run_id, job=run.job, state_was=state.value)
    return cancelled


def make_runtime(
    db: Database, client: AmcClient, settings: Settings, worker_id: str
) -> Runtime:
    """A runtime for one-off commands (the CLI's cancel)."""
    return Runtime(db, client, settings, worker_id, Metrics())
