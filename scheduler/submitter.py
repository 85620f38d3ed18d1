"""Submitting one run: create its execution, or decide what else to do.

Every outcome of a create maps to one decision: recorded (`pending`),
adopted (the execution already existed), back to the queue without using an
attempt (limit, throttle, transient error), or failed with AMC's reason
(privacy rejection, invalid request). A create that may have reached AMC
leaves the run a ``lookup_since``: before it is created again, AMC is asked
whether it exists.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from .amc.client import AccountRef, Execution
from .amc.errors import (
    AmcError,
    AmcNotFound,
    AuthenticationFailed,
    InvalidRequest,
    LimitReached,
    PrivacyRejected,
    Throttled,
    TransientError,
)
from .logs import get_logger
from .poller import Poller, cancel_in_flight
from .reconcile import CLOCK_SKEW, matches, needs_sql, workflow_matches
from .runtime import Runtime, backoff, record_execution
from .store.models import RunState
from .store.polls import owned_execution_ids
from .store.records import RunRecord
from .store.transitions import Pause, execution_owner, finish, requeue

log = get_logger(__name__)

LIST_PAGE = 100


def _utcnow() -> datetime:
    return datetime.now(UTC)


def seconds_to_next_utc_day() -> float:
    now = _utcnow()
    tomorrow = (now + timedelta(days=1)).replace(
        hour=0, minute=5, second=0, microsecond=0
    )
    return (tomorrow - now).total_seconds() + random.uniform(0, 300)


class Submitter:
    def __init__(self, runtime: Runtime, poller: Poller) -> None:
        self.rt = runtime
        self.poller = poller
        self._limit_streak: dict[str, int] = defaultdict(int)
        self._transient_streak: dict[int, int] = defaultdict(int)

    def _fields(self, run: RunRecord) -> dict[str, Any]:
        return {
            "run_id": run.id,
            "job": run.job,
            "instance_id": run.instance_id,
            "attempt": run.attempt + 1,
        }

    async def submit(self, run: RunRecord) -> None:
        rt = self.rt
        ref = rt.topology.ref(run.account_id)
        try:
            if ref is None:
                await self._requeue(
                    run,
                    rt.config.retry_max.total_seconds(),
                    "account_unknown",
                    f"account {run.account_id} is not in the config",
                )
                return

            if run.cancel_requested:
                await finish(
                    rt.db,
                    run,
                    RunState.CANCELLED,
                    reason="cancelled",
                    owner=rt.worker_id,
                    worker_id=rt.worker_id,
                )
                return

            if run.lookup_since is not None:
                found = await self._find_existing(ref, run, run.lookup_since)
                if found is not None:
                    await self._adopt(run, found)
                    return

            await self._create(ref, run)
        except asyncio.CancelledError:
            # Shut down mid-call: the create may have landed, so look first next time.
            await asyncio.shield(
                self._requeue(run, 0, "shutdown", None, lookup_since=run.claimed_at)
            )
            raise
        except AmcError as error:
            await self._on_error(run, error)

    async def _create(self, ref: AccountRef, run: RunRecord) -> None:
        rt = self.rt
        try:
            execution = await rt.client.create_execution(
                ref, run.instance_id, run.request
            )
        except LimitReached as error:
            await self._on_limit(run, error)
            return

        self._limit_streak.pop(run.instance_id, None)
        self._transient_streak.pop(run.id, None)
        rt.metrics.submissions.labels("created").inc()
        recorded = await record_execution(rt, run, execution, owner=rt.worker_id)
        if recorded is None:
            await self._orphaned(run, execution)
            return

        rt.metrics.queue_wait.observe(
            max(0.0, (_utcnow() - run.created_at).total_seconds())
        )
        log.info("run_submitted", execution_id=execution.id, **self._fields(run))
        if recorded.cancel_requested:
            await cancel_in_flight(rt, recorded, ref)

    async def _on_error(self, run: RunRecord, error: AmcError) -> None:
        rt = self.rt
        config = rt.config
        fields = {**self._fields(run), "error": str(error)}
        if isinstance(error, Throttled):
            rt.metrics.submissions.labels("throttled").inc()
            rt.metrics.limit_errors.labels(
                run.account_id, run.instance_id, "throttle"
            ).inc()
            delay = error.retry_after or backoff(
                1, config.retry_base.total_seconds(), config.retry_max.total_seconds()
            )
            log.info("run_throttled", retry_in=round(delay, 1), **fields)
            await self._requeue(run, delay, "throttled", error.details)
        elif isinstance(error, TransientError):
            rt.metrics.submissions.labels("transient").inc()
            self._transient_streak[run.id] += 1
            delay = backoff(
                self._transient_streak[run.id],
                config.retry_base.total_seconds(),
                config.retry_max.total_seconds(),
            )
            lookup = run.claimed_at if error.ambiguous else None
            log.warning(
                "submit_failed",
                ambiguous=error.ambiguous,
                retry_in=round(delay, 1),
                **fields,
            )
            await self._requeue(
                run,
                delay,
                "create_ambiguous" if error.ambiguous else "transient_error",
                str(error),
                lookup_since=lookup,
            )
        elif isinstance(error, AuthenticationFailed):
            rt.metrics.submissions.labels("auth").inc()
            log.error("authentication_failed", **fields)
            await self._requeue(
                run,
                config.retry_max.total_seconds(),
                "authentication_failed",
                str(error),
                lookup_since=run.lookup_since,
            )
        elif isinstance(error, PrivacyRejected | InvalidRequest | AmcNotFound):
            rt.metrics.submissions.labels("rejected").inc()
            reason = {
                PrivacyRejected: "privacy_rejected",
                AmcNotFound: "instance_not_found",
            }.get(type(error), "invalid_request")
            log.error("run_failed", reason=reason, message=error.details, **fields)
            await finish(
                rt.db,
                run,
                RunState.FAILED,
                reason=reason,
                message=error.details or str(error),
                owner=rt.worker_id,
                worker_id=rt.worker_id,
            )
        else:
            await self._requeue(
                run,
                config.retry_max.total_seconds(),
                "amc_error",
                str(error),
                lookup_since=run.lookup_since,
            )

    async def _on_limit(self, run: RunRecord, error: LimitReached) -> None:
        rt = self.rt
        config = rt.config
        self._limit_streak[run.instance_id] += 1
        if error.quota:
            delay = seconds_to_next_utc_day()
            reason = "quota_reached"
        else:
            delay = error.retry_after or backoff(
                self._limit_streak[run.instance_id],
                config.retry_base.total_seconds(),
                config.retry_max.total_seconds(),
            )
            reason = "limit_reached"

        account_wide = "account" in (error.details or "").lower()
        scope, key = (
            ("account", run.account_id)
            if account_wide
            else ("instance", run.instance_id)
        )
        rt.metrics.submissions.labels("limit").inc()
        rt.metrics.limit_errors.labels(
            run.account_id, run.instance_id, "quota" if error.quota else "limit"
        ).inc()
        log.warning(
            "limit_hit",
            scope=scope,
            retry_in=round(delay, 1),
            message=error.details,
            **self._fields(run),
        )
        await self._requeue(
            run, delay, reason, error.details, pause=Pause(scope, key, delay, reason)
        )
        # Our count said there was room: learn what else holds the slots.
        self.poller.poke(run.instance_id)

    async def _requeue(
        self,
        run: RunRecord,
        delay: float,
        reason: str,
        message: str | None,
        *,
        lookup_since: datetime | None = None,
        pause: Pause | None = None,
    ) -> None:
        await requeue(
            self.rt.db,
            run,
            owner=self.rt.worker_id,
            delay=delay,
            reason=reason,
            message=message,
            lookup_since=lookup_since,
            pause=pause,
            worker_id=self.rt.worker_id,
        )

    async def _find_existing(
        self, ref: AccountRef, run: RunRecord, since: datetime
    ) -> Execution | None:
        """An execution at AMC that this run created without recording it."""
        client = self.rt.client
        saved = run.workflow_id if run.sql is None else None
        found = [
            e
            async for e in client.list_executions(
                ref,
                run.instance_id,
                min_creation_time=since - CLOCK_SKEW,
                workflow_id=saved,
                page_size=LIST_PAGE,
            )
        ]
        owned = await owned_execution_ids(self.rt.db, [e.id for e in found])
        candidates = sorted(
            (e for e in found if e.id not in owned and matches(run, e, since)),
            key=lambda e: (e.create_time or since, e.id),
        )
        for execution in candidates:
            if needs_sql(run, execution):
                execution = await client.get_execution(
                    ref, run.instance_id, execution.id, include_workflow=True
                )
                if not workflow_matches(run, execution):
                    continue

            return execution

        return None

    async def _adopt(self, run: RunRecord, execution: Execution) -> None:
        rt = self.rt
        recorded = await record_execution(
            rt, run, execution, owner=rt.worker_id, adopted=True
        )
        if recorded is not None:
            rt.metrics.submissions.labels("adopted").inc()
            log.info(
                "execution_adopted", execution_id=execution.id, **self._fields(run)
            )

    async def _orphaned(self, run: RunRecord, execution: Execution) -> None:
        """Created, but the lease was lost meanwhile: hand the execution over."""
        rt = self.rt
        adopted = await record_execution(
            rt, run, execution, owner=None, adopted=True, expect=(RunState.QUEUED,)
        )
        if adopted is not None:
            return

        owner_run = await execution_owner(rt.db, execution.id)
        if owner_run is not None:
            # The run's own lookup found it first.
            log.info(
                "execution_already_recorded",
                execution_id=execution.id,
                owner_run_id=owner_run,
                **self._fields(run),
            )
            return

        # Counted as external by the instance's poller until its run's own
        # lookup adopts it.
        log.error("execution_orphaned", execution_id=execution.id, **self._fields(run))

    # Leases and recovery

    async def recover(self, run: RunRecord) -> None:
        """Reconcile a submission whose process died: adopt or requeue, never
        submit blindly."""
        rt = self.rt
        since = run.lookup_since or run.claimed_at or run.updated_at
        ref = rt.topology.ref(run.account_id)
        found = None
        if ref is not None:
            try:
                found = await self._find_existing(ref, run, since)
            except AmcError as error:
                log.warning(
                    "recovery_lookup_failed", error=str(error), **self._fields(run)
                )
                await self._requeue(
                    run,
                    rt.config.retry_base.total_seconds(),
                    "lease_expired",
                    None,
                    lookup_since=since,
                )
                return

        if found is not None:
            await self._adopt(run, found)
        else:
            await self._requeue(run, 0, "lease_expired", None, lookup_since=since)
