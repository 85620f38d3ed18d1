"""Following executions at AMC: one list call per instance per tick.

The process holding an instance's poll lease lists that instance's
executions, records every status change of the runs in flight there (a GET
covers any the list did not return), counts executions no run owns as
external slots, and adopts executions whose create was ambiguous. The next
tick comes when a finish is likely (see ``polling``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .amc.client import AccountRef, Execution
from .amc.errors import AmcError, AmcNotFound, failure_is_retryable, is_privacy_message
from .logs import get_logger
from .polling import InFlight, next_poll_delay
from .reconcile import best_match
from .runtime import Runtime, backoff, record_execution
from .store.models import RunState
from .store.polls import (
    External,
    adoption_candidates,
    external_on_instance,
    forget_external,
    owned_execution_ids,
    record_external,
    runs_on_instance,
)
from .store.records import RunRecord
from .store.transitions import (
    Observation,
    Outcome,
    finish,
    record_observation,
    touch_status,
)

log = get_logger(__name__)

LIST_MARGIN = timedelta(minutes=5)
LIST_PAGE = 100
# Past its own timeout an execution is cancelled and its run failed.
TIMEOUT_GRACE = timedelta(minutes=10)


@dataclass
class InstancePoll:
    instance_id: str
    next_at: float = 0.0
    last_list_at: datetime | None = None
    missing: dict[str, float] = field(default_factory=dict)
    busy: bool = False
    # The soonest a run submitted during a poll wants the next one.
    hint: float = math.inf


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Poller:
    def __init__(
        self,
        runtime: Runtime,
        on_succeeded: Callable[[RunRecord], None] | None = None,
    ) -> None:
        self.rt = runtime
        self.owned: dict[str, InstancePoll] = {}
        self.wake = asyncio.Event()
        self._on_succeeded = on_succeeded

    def take(self, instance_id: str) -> None:
        if instance_id not in self.owned:
            self.owned[instance_id] = InstancePoll(instance_id)
            self.wake.set()

    def drop(self, instance_id: str) -> None:
        self.owned.pop(instance_id, None)

    def poke(self, instance_id: str) -> None:
        """Poll this instance now (a limit error says our count is off)."""
        self._want(instance_id, time.monotonic())

    def expect(self, instance_id: str, job: str) -> None:
        """A run of ``job`` was just submitted here: poll when it may finish."""
        rt = self.rt
        delay = next_poll_delay(
            [InFlight(0.0, rt.model_for(job))],
            minimum=rt.config.poll_min.total_seconds(),
            maximum=rt.config.poll_max.total_seconds(),
            urgent=rt.urgent(instance_id),
            waste=rt.config.poll_waste.total_seconds(),
        )
        self._want(instance_id, time.monotonic() + delay)

    def _want(self, instance_id: str, at: float) -> None:
        state = self.owned.get(instance_id)
        if state is None:
            return

        if state.busy:
            state.hint = min(state.hint, at)
        else:
            state.next_at = min(state.next_at, at)

        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Start each owned instance's poll when it is due."""
        limit = asyncio.Semaphore(8)
        while not stop.is_set():
            self.wake.clear()
            now = time.monotonic()
            for state in list(self.owned.values()):
                if not state.busy and state.next_at <= now:
                    state.busy = True
                    self.rt.spawn(
                        self._guarded(state, limit), f"poll:{state.instance_id}"
                    )

            pending = [s.next_at for s in self.owned.values() if not s.busy]
            delay = min(pending, default=now + 1.0) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(0.01, delay))

    async def _guarded(self, state: InstancePoll, limit: asyncio.Semaphore) -> None:
        delay = self.rt.config.poll_min.total_seconds()
        try:
            async with limit:
                delay = await self.poll(state)
        except Exception as exc:
            self.rt.metrics.loop_failures.labels("poll").inc()
            log.warning("poll_failed", instance_id=state.instance_id, error=str(exc))
        finally:
            state.busy = False
            state.next_at = min(time.monotonic() + delay, state.hint)
            state.hint = math.inf
            self.wake.set()

    def _list_since(
        self,
        state: InstancePoll,
        in_flight: list[RunRecord],
        external: list[External],
        now: datetime,
    ) -> datetime:
        floor = now - self.rt.config.lookback
        known = [r.submitted_at for r in in_flight if r.submitted_at is not None]
        known += [e.create_time for e in external if e.create_time is not None]
        if state.last_list_at is not None:
            known.append(state.last_list_at)

        if not known:
            return floor

        return max(floor, min(known) - LIST_MARGIN)

    async def poll(self, state: InstancePoll) -> float:
        """List one instance, act on what changed; returns seconds to the next."""
        rt = self.rt
        instance_id = state.instance_id
        account = rt.topology.account_of(instance_id)
        if account is None:
            return rt.config.poll_max.total_seconds()

        ref = AccountRef(account.id, account.marketplace_id)
        now = _utcnow()
        states = [RunState.SUBMITTING, RunState.PENDING, RunState.RUNNING]
        before = await runs_on_instance(rt.db, instance_id, states)
        external = await external_on_instance(rt.db, instance_id)
        since = self._list_since(
            state, [r for r in before if r.submitted_at], external, now
        )
        listed: dict[str, Execution] = {}
        async for item in rt.client.list_executions(
            ref, instance_id, min_creation_time=since, page_size=LIST_PAGE
        ):
            listed[item.id] = item

        state.last_list_at = now
        # Read after the list: every listed execution of ours is then either
        # recorded or still being submitted, never mistaken for an outside one.
        ours = await runs_on_instance(rt.db, instance_id, states)
        in_flight = [r for r in ours if r.execution_id and r.state != "submitting"]
        still_running: list[InFlight] = []
        for run in in_flight:
            execution = listed.get(run.execution_id or "") or await self._get(
                ref, run, state
            )
            if execution is not None and await self._observe(ref, run, execution):
                still_running.append(self._in_flight(run, execution))

        await self._settle_unknown(ref, account.id, instance_id, listed, ours, external)
        models = still_running + [
            InFlight(self._elapsed(e.create_time, now), rt.external_model())
            for e in await external_on_instance(rt.db, instance_id)
        ]
        return next_poll_delay(
            models,
            minimum=rt.config.poll_min.total_seconds(),
            maximum=rt.config.poll_max.total_seconds(),
            urgent=rt.urgent(instance_id),
            waste=rt.config.poll_waste.total_seconds(),
        )

    @staticmethod
    def _elapsed(since: datetime | None, now: datetime) -> float:
        return 0.0 if since is None else max(0.0, (now - since).total_seconds())

    def _in_flight(self, run: RunRecord, execution: Execution) -> InFlight:
        started = execution.create_time or run.submitted_at
        return InFlight(self._elapsed(started, _utcnow()), self.rt.model_for(run.job))

    async def _get(
        self, ref: AccountRef, run: RunRecord, state: InstancePoll
    ) -> Execution | None:
        """Fill a gap the list left; an execution gone for long is given up."""
        assert run.execution_id is not None
        try:
            execution = await self.rt.client.get_execution(
                ref, run.instance_id, run.execution_id
            )
        except AmcNotFound:
            if run.execution_id not in state.missing:
                log.warning(
                    "execution_missing",
                    run_id=run.id,
                    instance_id=run.instance_id,
                    execution_id=run.execution_id,
                )

            first = state.missing.setdefault(run.execution_id, time.monotonic())
            if time.monotonic() - first < self.rt.config.lost_after.total_seconds():
                return None

            state.missing.pop(run.execution_id, None)
            return Execution(
                id=run.execution_id,
                status="FAILED",
                reason="the execution is no longer known to AMC",
            )

        state.missing.pop(run.execution_id, None)
        return execution

    async def _observe(self, ref: AccountRef, run: RunRecord, e: Execution) -> bool:
        """Record what AMC says of ``run``; True while it is still in flight."""
        rt = self.rt
        if e.in_flight and run.cancel_requested:
            cancelled = await rt.client.cancel_execution(ref, run.instance_id, e.id)
            e = cancelled or await rt.client.get_execution(ref, run.instance_id, e.id)

        if e.in_flight:
            if self._timed_out(run, e):
                await rt.client.cancel_execution(ref, run.instance_id, e.id)
                await self._finished(
                    run,
                    Observation(run, "CANCELLED", reason="timed out"),
                    Outcome(RunState.FAILED, "timed_out", message="timed out"),
                )
                return False

            if e.status in ("RUNNING", "PUBLISHING") and run.state == "pending":
                updated = await record_observation(
                    rt.db,
                    Observation(run, e.status),
                    Outcome(RunState.RUNNING, "execution_running"),
                    rt.worker_id,
                )
                if updated is not None and run.submitted_at is not None:
                    waited = (_utcnow() - run.submitted_at).total_seconds()
                    rt.metrics.start_latency.observe(max(0.0, waited))
            elif e.status != run.amc_status:
                await touch_status(rt.db, run, e.status)

            return True

        await self._finished(
            run,
            Observation(run, e.status, e.last_updated_time, e.reason),
            self._outcome(run, e),
        )
        return False

    def _timed_out(self, run: RunRecord, e: Execution) -> bool:
        started = e.create_time or run.submitted_at
        if started is None:
            return False

        limit = timedelta(seconds=e.timeout_seconds or run.timeout_seconds)
        return _utcnow() - started > limit + TIMEOUT_GRACE

    def _outcome(self, run: RunRecord, e: Execution) -> Outcome:
        if e.status == "SUCCEEDED":
            return Outcome(RunState.SUCCEEDED, "execution_succeeded")

        if e.status == "CANCELLED":
            reason = "cancelled" if run.cancel_requested else "cancelled_at_amc"
            return Outcome(RunState.CANCELLED, reason, message=e.reason)

        if is_privacy_message(e.reason):
            return Outcome(RunState.FAILED, "privacy_rejected", message=e.reason)

        if not failure_is_retryable(e.reason):
            return Outcome(RunState.FAILED, "execution_failed", message=e.reason)

        if run.attempt >= run.max_attempts:
            return Outcome(RunState.FAILED, "attempts_exhausted", message=e.reason)

        config = self.rt.config
        delay = backoff(
            run.attempt,
            config.retry_base.total_seconds(),
            config.retry_max.total_seconds(),
        )
        return Outcome(
            RunState.QUEUED, "execution_failed", retry_delay=delay, message=e.reason
        )

    async def _finished(
        self, run: RunRecord, observation: Observation, outcome: Outcome
    ) -> None:
        rt = self.rt
        updated = await record_observation(rt.db, observation, outcome, rt.worker_id)
        if updated is None:
            return

        rt.slot_freed()
        if outcome.to.terminal:
            rt.metrics.runs_finished.labels(run.job, outcome.to.value).inc()

        if run.submitted_at is not None and observation.amc_end_time is not None:
            held = (observation.amc_end_time - run.submitted_at).total_seconds()
            rt.metrics.run_duration.labels(run.job).observe(max(0.0, held))

        fields = {
            "run_id": run.id,
            "job": run.job,
            "instance_id": run.instance_id,
            "attempt": run.attempt,
            "execution_id": run.execution_id,
            "amc_status": observation.amc_status,
        }
        if outcome.to is RunState.SUCCEEDED:
            log.info("run_succeeded", **fields)
            if self._on_succeeded is not None:
                self._on_succeeded(updated)
        elif outcome.to is RunState.QUEUED:
            log.warning(
                "execution_failed_retrying",
                retry_in=round(outcome.retry_delay or 0, 1),
                reason=outcome.message,
                **fields,
            )
        elif outcome.to is RunState.CANCELLED:
            log.info("run_cancelled", reason=outcome.reason, **fields)
        else:
            log.error(
                "run_failed", reason=outcome.reason, message=outcome.message, **fields
            )

    async def _settle_unknown(
        self,
        ref: AccountRef,
        account_id: str,
        instance_id: str,
        listed: dict[str, Execution],
        ours: list[RunRecord],
        external: list[External],
    ) -> None:
        """Adopt, ignore or count as external each execution no run holds yet."""
        rt = self.rt
        mine = {r.execution_id for r in ours if r.execution_id}
        known = {e.execution_id: e for e in external}
        unknown = [e for e in listed.values() if e.id not in mine and e.id not in known]
        owned = await owned_execution_ids(rt.db, [e.id for e in unknown])
        unknown = [e for e in unknown if e.id not in owned]
        for run in await adoption_candidates(rt.db, instance_id):
            assert run.lookup_since is not None
            match = best_match(run, unknown, run.lookup_since)
            if match is None:
                continue

            adopted = await record_execution(
                rt, run, match, owner=None, adopted=True, expect=(RunState.QUEUED,)
            )
            unknown.remove(match)
            if adopted is not None:
                log.info(
                    "execution_adopted",
                    run_id=run.id,
                    job=run.job,
                    instance_id=instance_id,
                    execution_id=match.id,
                )
                await self._observe(ref, adopted, match)

        # A create in progress right now: its submitter records it.
        for run in ours:
            if run.state == "submitting" and run.claimed_at is not None:
                match = best_match(run, unknown, run.claimed_at)
                if match is not None:
                    unknown.remove(match)

        seen = [
            External(
                e.id, instance_id, e.status, e.in_flight, e.workflow_id, e.create_time
            )
            for e in unknown
            if e.in_flight
        ]
        for execution_id, row in known.items():
            current = listed.get(execution_id)
            if current is not None:
                seen.append(
                    External(
                        execution_id,
                        instance_id,
                        current.status,
                        current.in_flight,
                        row.workflow_id,
                        row.create_time,
                    )
                )

        for row in seen:
            if row.execution_id not in known and row.in_flight:
                log.info(
                    "external_execution_seen",
                    instance_id=instance_id,
                    execution_id=row.execution_id,
                    status=row.status,
                )

        await record_external(rt.db, account_id, seen)
        ended = [x for x, e in known.items() if x in listed and not listed[x].in_flight]
        gone = [x for x in known if x not in listed]
        ended += await self._confirm_gone(ref, instance_id, gone)
        if ended:
            await forget_external(rt.db, ended)
            rt.slot_freed()

    async def _confirm_gone(
        self, ref: AccountRef, instance_id: str, execution_ids: list[str]
    ) -> list[str]:
        """Of external executions the list no longer shows, those that ended."""
        ended = []
        for execution_id in execution_ids:
            try:
                execution = await self.rt.client.get_execution(
                    ref, instance_id, execution_id
                )
            except AmcNotFound:
                ended.append(execution_id)
                continue
            except AmcError:
                continue

            if execution.terminal:
                ended.append(execution_id)

        return ended


async def cancel_in_flight(
    rt: Runtime, run: RunRecord, ref: AccountRef
) -> RunRecord | None:
    """Cancel a pending or running run at AMC, then mark it cancelled."""
    assert run.execution_id is not None
    result = await rt.client.cancel_execution(ref, run.instance_id, run.execution_id)
    if result is None:
        current = await rt.client.get_execution(ref, run.instance_id, run.execution_id)
        if current.terminal and current.status != "CANCELLED":
            return None

    updated = await finish(
        rt.db,
        run,
        RunState.CANCELLED,
        reason="cancelled",
        expect=(RunState.PENDING, RunState.RUNNING),
        worker_id=rt.worker_id,
    )
    if updated is not None:
        rt.slot_freed()

    return updated
