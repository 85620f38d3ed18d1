"""What the CLI and the HTTP API do on request: enqueue, backfill, describe, cancel."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .config import JobSettings, Settings
from .errors import InvalidInput, NotFound
from .jobs import build_run
from .logs import get_logger
from .store import Database, RunState
from .store.history import get_run
from .store.queue import EnqueueResult, enqueue, notify
from .store.records import RunRecord
from .store.transitions import finish, request_cancel
from .windows import Window, WindowRule, resolve, tumbling

log = get_logger(__name__)
_RULE = TypeAdapter(WindowRule)


def job_named(settings: Settings, name: str) -> JobSettings:
    try:
        return settings.job(name)
    except KeyError:
        known = ", ".join(job.name for job in settings.jobs) or "none"
        raise NotFound(f"unknown job {name!r} (known: {known})") from None


def job_time_zone(job: JobSettings) -> str:
    """The zone a job's windows are written in: its rule's, else the job's."""
    zone = getattr(job.time_window, "time_zone", None)
    return zone or job.time_zone


def window_from(
    job: JobSettings, value: Mapping[str, Any] | None, at: datetime
) -> Window | None:
    """A window override given as a rule, or as ``{start, end[, time_zone]}``."""
    if value is None:
        return None

    document = dict(value)
    if "type" not in document and "last" not in document:
        document = {"type": "EXPLICIT", "time_zone": job_time_zone(job), **document}

    try:
        rule = _RULE.validate_python(document)
        return resolve(rule, at)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(
            str(p) for p in first["loc"] if p not in ("amc", "explicit", "relative")
        )
        raise InvalidInput(
            f"window{'.' + where if where else ''}: {first['msg']}"
        ) from None
    except ValueError as exc:
        raise InvalidInput(f"window: {exc}") from None


async def enqueue_job(
    db: Database,
    settings: Settings,
    name: str,
    *,
    window: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    source: str,
    worker_id: str | None = None,
) -> EnqueueResult:
    job = job_named(settings, name)
    now = datetime.now(UTC)
    try:
        new = build_run(
            settings,
            job,
            now,
            source=source,
            window=window_from(job, window, now),
            parameters=parameters,
        )
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(str(exc)) from None

    (result,) = await enqueue(db, [new], worker_id)
    log.info(
        "run_enqueued",
        run_id=result.run.id,
        job=name,
        source=source,
        created=result.created,
        window=result.run.window_fields(),
    )
    return result


def parse_moment(text: str, field: str) -> datetime:
    """A date or yyyy-MM-ddTHH:mm:ss, naive (local to the job's zone)."""
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%Y-%m-%dT%H:%M"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue

    raise InvalidInput(
        f"{field}: invalid time {text!r} (expected 2026-05-01 or 2026-05-01T06:00:00)"
    )


async def backfill(
    db: Database,
    settings: Settings,
    name: str,
    *,
    start: datetime,
    end: datetime,
    step: timedelta,
    parameters: Mapping[str, Any] | None = None,
    time_zone: str | None = None,
    worker_id: str | None = None,
) -> list[EnqueueResult]:
    """Tumbling windows of ``step`` over ``[start, end)``, each a deduplicated run."""
    job = job_named(settings, name)
    zone = time_zone or job_time_zone(job)
    try:
        windows = list(tumbling(start, end, step, zone))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None

    if len(windows) > 10_000:
        raise InvalidInput(f"{len(windows)} windows: more than 10000 in one backfill")

    now = datetime.now(UTC)
    new_runs = [
        build_run(
            settings, job, now, source="backfill", window=w, parameters=parameters
        )
        for w in windows
    ]
    results = await enqueue(db, new_runs, worker_id)
    log.info(
        "backfill_enqueued",
        job=name,
        windows=len(windows),
        created=sum(r.created for r in results),
    )
    return results


async def request_cancellation(db: Database, run_id: int) -> RunRecord:
    """Cancel a queued run now; flag an in-flight one for the daemon to cancel.

    The daemon holding the run's instance cancels it at AMC (PUT) and then
    marks it cancelled; NOTIFY tells it to look now.
    """
    run = await get_run(db, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}")

    if run.run_state.terminal:
        raise InvalidInput(f"run {run_id} is already {run.state}")

    if run.run_state is RunState.QUEUED:
        done = await finish(
            db, run, RunState.CANCELLED, reason="cancelled", expect=(RunState.QUEUED,)
        )
        if done is not None:
            return done

        return await request_cancellation(db, run_id)

    flagged = await request_cancel(db, run_id)
    if flagged is None:
        return await request_cancellation(db, run_id)

    await notify(db, f"cancel:{flagged.instance_id}")
    return flagged


def window_of(run: RunRecord) -> dict[str, Any]:
    request = run.request
    window = {"type": request.get("timeWindowType", "MOST_RECENT_DAY")}
    for key, name in (
        ("timeWindowStart", "start"),
        ("timeWindowEnd", "end"),
        ("timeWindowTimeZone", "time_zone"),
    ):
        if key in request:
            window[name] = request[key]

    return window


def duration_seconds(run: RunRecord) -> float | None:
    if run.submitted_at is None:
        return None

    end = run.finished_at or datetime.now(UTC)
    return round((end - run.submitted_at).total_seconds(), 3)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def run_json(run: RunRecord) -> dict[str, Any]:
    """A run as the API and ``history --json`` show it."""
    return {
        "id": run.id,
        "job": run.job,
        "account": run.account_id,
        "instance": run.instance_id,
        "state": run.state,
        "source": run.source,
        "priority": run.priority,
        "window": window_of(run),
        "parameters": dict(run.request.get("parameterValues") or {}),
        "workflow_id": run.workflow_id,
        "ad_hoc": run.sql is not None,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "execution_id": run.execution_id,
        "amc_status": run.amc_status,
        "reason": run.reason,
        "message": run.message,
        "cancel_requested": run.cancel_requested,
        "results": run.results_state,
        "not_before": _iso(run.not_before),
        "created_at": _iso(run.created_at),
        "submitted_at": _iso(run.submitted_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_seconds": duration_seconds(run),
    }
