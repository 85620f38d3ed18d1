"""Queue throughput: runs through the store, beside Procrastinate on one Postgres.

    python -m benchmarks.queue_throughput                    # embedded Postgres
    python -m benchmarks.queue_throughput --database-url URL # a server
    python -m benchmarks.queue_throughput --both             # embedded, then
                                                             # 127.0.0.1:5432

What is measured, on a fresh database for each system and measurement:

* defer: ``--concurrency`` producers (8) enqueue ``--runs`` runs (20,000),
  one run per call and transaction, until all are in; for Procrastinate,
  ``defer_async()`` of a no-op task, on its schema applied to the database;
* run: then ``--concurrency`` workers drain them. For the scheduler a worker
  admits runs of one account at a time (``queue.admit``, up to
  ``--claim-batch`` per admission, accounts taken in turn) and completes
  each against an instant AMC: ``record_submitted`` with a fake execution
  id, then ``record_observation`` to SUCCEEDED. For Procrastinate one worker
  with ``concurrency`` N (``PsycopgConnector``) runs the jobs until the
  queue is empty;
* total: from the first defer to the last run done (defer + run).

Runs per second is the number of runs over each phase's wall time. Client
CPU is the benchmark process's CPU time in the phase; the database server
runs on the same machine and takes the rest. The scheduler's runs spread over
10 accounts of 10 instances with AMC's real limits (10 per instance, 200 per
account): with an instant AMC at most concurrency x claim batch runs are in
flight, so the limits never bind and the figures are the queue's own.

Claim batches 1 and 10 are measured: 1 claims as Procrastinate fetches, one
run per admission; the daemon's admission pass claims as many as it has
room to submit. A what-if row repeats the largest batch with the daemon's
Database minus the pool's pre-ping (see ``WithoutPrePing``). Every variant
runs ``--repeat`` times, interleaved, and the median of each phase is
reported. Figures go to benchmarks/results/queue-throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler.logs import configure
from scheduler.store.engine import Database, normalise_url
from scheduler.store.migrate import upgrade
from scheduler.store.models import RunState
from scheduler.store.queue import AccountLimits, InstanceLimit, admit, enqueue
from scheduler.store.records import NewRun, RunRecord
from scheduler.store.transitions import (
    Observation,
    Outcome,
    record_observation,
    record_submitted,
)

from .database import bench_database
from .workloads import Workload, wide

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LEASE_SECONDS = 120.0
OURS = "amc-scheduler"
OURS_WITHOUT_PING = "amc-scheduler, no pre-ping (what-if)"
THEIRS = "procrastinate"


@dataclass(frozen=True)
class Figures:
    """One system's figures on one database."""

    system: str
    database: str
    runs: int
    concurrency: int
    claim_batch: int | None
    defer_seconds: float
    run_seconds: float
    defer_cpu_seconds: float
    run_cpu_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.defer_seconds + self.run_seconds

    @property
    def defer_rate(self) -> float:
        return self.runs / self.defer_seconds

    @property
    def run_rate(self) -> float:
        return self.runs / self.run_seconds

    @property
    def total_rate(self) -> float:
        return self.runs / self.total_seconds

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "total_seconds": self.total_seconds,
            "defer_per_second": self.defer_rate,
            "run_per_second": self.run_rate,
            "total_per_second": self.total_rate,
        }


@dataclass(frozen=True)
class Variant:
    """What one measurement runs: a system, and for ours its claim batch and
    whether the engine pings each connection it hands out."""

    system: str
    claim_batch: int | None = None
    pre_ping: bool = True


class WithoutPrePing(Database):
    """The daemon's Database, except that the pool does not ping a connection
    before handing it out (a what-if for engine.py: with asyncpg that ping is
    BEGIN, an empty query and ROLLBACK, three round trips per transaction)."""

    def _create_engine(self, url: URL, pool_size: int) -> AsyncEngine:
        engine = super()._create_engine(url, pool_size)
        engine.sync_engine.pool._pre_ping = False
        return engine


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy URL as a libpq one (asyncpg, psycopg)."""
    return (
        normalise_url(url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


async def timed(
    work: Callable[[], Coroutine[Any, Any, None]],
) -> tuple[float, float]:
    """Wall and process CPU seconds of ``work``."""
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return time.perf_counter() - wall, time.process_time() - cpu


async def in_parallel(
    count: int, work: Callable[[int], Coroutine[Any, Any, None]]
) -> None:
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(work(index))


def split(items: Sequence[Any], parts: int) -> list[Sequence[Any]]:
    return [items[index::parts] for index in range(parts)]


# The scheduler's store


def new_runs(workload: Workload) -> list[NewRun]:
    medians = {job.name: job.median for job in workload.jobs}
    return [
        NewRun(
            job=run.job,
            account_id=run.account,
            instance_id=run.instance,
            request={
                "workflowId": run.workflow_id,
                "timeWindowType": "EXPLICIT",
                "timeWindowStart": run.window_start,
                "timeWindowEnd": run.window_end,
                "timeWindowTimeZone": "UTC",
            },
            max_attempts=3,
            expected_seconds=medians[run.job],
            source="bench",
        )
        for run in workload.runs
    ]


def account_limits(workload: Workload) -> list[AccountLimits]:
    return [
        AccountLimits(
            account.id,
            account.limit,
            tuple(InstanceLimit(i.id, i.limit) for i in account.instances),
        )
        for account in workload.accounts
    ]


async def complete(db: Database, run: RunRecord, worker: str) -> None:
    """What an instant AMC leads to: submitted, then observed SUCCEEDED."""
    submitted = await record_submitted(
        db,
        run,
        owner=worker,
        execution_id=f"bench-{run.id}",
        amc_status="PENDING",
        amc_create_time=None,
        worker_id=worker,
    )
    assert submitted is not None
    done = await record_observation(
        db,
        Observation(submitted, "SUCCEEDED"),
        Outcome(RunState.SUCCEEDED, "execution_succeeded"),
        worker,
    )
    assert done is not None


async def drain_store(
    db: Database, accounts: list[AccountLimits], concurrency: int, claim_batch: int
) -> None:
    async def worker(index: int) -> None:
        name = f"bench-worker-{index}"
        turn = index
        idle = 0
        # Stop after a full round of accounts that had nothing to admit.
        while idle < len(accounts):
            account = accounts[turn % len(accounts)]
            turn += 1
            admission = await admit(
                db,
                account,
                owner=name,
                lease_seconds=LEASE_SECONDS,
                max_claims=claim_batch,
            )
            idle = 0 if admission.claimed else idle + 1
            for run in admission.claimed:
                await complete(db, run, name)

    await in_parallel(concurrency, worker)


async def bench_scheduler(
    url: str, label: str, runs: int, concurrency: int, variant: Variant
) -> Figures:
    assert variant.claim_batch is not None
    claim_batch = variant.claim_batch
    workload = wide(accounts=10, instances=10, runs=runs)
    batch = new_runs(workload)
    kind = Database if variant.pre_ping else WithoutPrePing
    db = kind(url, Path("unused"), pool_size=max(10, concurrency))
    await db.open()
    try:
        await upgrade(db)
        parts = split(batch, concurrency)

        async def defer() -> None:
            async def producer(index: int) -> None:
                for run in parts[index]:
                    await enqueue(db, [run])

            await in_parallel(concurrency, producer)

        defer_wall, defer_cpu = await timed(defer)
        accounts = account_limits(workload)
        run_wall, run_cpu = await timed(
            lambda: drain_store(db, accounts, concurrency, claim_batch)
        )
    finally:
        await db.close()

    conn = await asyncpg.connect(libpq_dsn(url))
    try:
        succeeded = await conn.fetchval(
            "SELECT count(*) FROM runs WHERE state = 'succeeded'"
        )
    finally:
        await conn.close()

    assert succeeded == runs, f"{succeeded} of {runs} runs succeeded"
    return Figures(
        variant.system,
        label,
        runs,
        concurrency,
        claim_batch,
        defer_wall,
        run_wall,
        defer_cpu,
        run_cpu,
    )


# Procrastinate


async def bench_procrastinate(
    url: str, label: str, runs: int, concurrency: int
) -> Figures:
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=libpq_dsn(url), min_size=concurrency + 2, max_size=concurrency + 4
    )
    app = procrastinate.App(connector=connector)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()

        async def defer() -> None:
            counts = [len(part) for part in split(range(runs), concurrency)]

            async def producer(index: int) -> None:
                for _ in range(counts[index]):
                    await noop.defer_async()

            await in_parallel(concurrency, producer)

        defer_wall, defer_cpu = await timed(defer)
        run_wall, run_cpu = await timed(
            lambda: app.run_worker_async(
                concurrency=concurrency,
                wait=False,
                install_signal_handlers=False,
                listen_notify=False,
            )
        )
        conn = await asyncpg.connect(libpq_dsn(url))
        try:
            succeeded = await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
        finally:
            await conn.close()

    assert succeeded == runs, f"{succeeded} of {runs} jobs succeeded"
    return Figures(
        THEIRS,
        label,
        runs,
        concurrency,
        None,
        defer_wall,
        run_wall,
        defer_cpu,
        run_cpu,
    )


# Output


def median(figures: list[Figures]) -> Figures:
    """Repeated measurements of one variant: the median of each phase."""
    first = figures[0]
    return replace(
        first,
        defer_seconds=statistics.median(f.defer_seconds for f in figures),
        run_seconds=statistics.median(f.run_seconds for f in figures),
        defer_cpu_seconds=statistics.median(f.defer_cpu_seconds for f in figures),
        run_cpu_seconds=statistics.median(f.run_cpu_seconds for f in figures),
    )


def table(rows: list[Figures]) -> str:
    lines = [
        "| database | system | concurrency | claim batch | defer runs/s (s)"
        " | run runs/s (s) | total runs/s (s) | client CPU s (defer / run) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in rows:
        lines.append(
            f"| {f.database} | {f.system} | {f.concurrency}"
            f" | {f.claim_batch if f.claim_batch is not None else '1 (fetch)'}"
            f" | {f.defer_rate:,.0f} ({f.defer_seconds:.1f})"
            f" | {f.run_rate:,.0f} ({f.run_seconds:.1f})"
            f" | {f.total_rate:,.0f} ({f.total_seconds:.1f})"
            f" | {f.defer_cpu_seconds:.1f} / {f.run_cpu_seconds:.1f} |"
        )

    return "\n".join(lines)


def ratios(rows: list[Figures]) -> str:
    lines = [
        "| database | system | claim batch | defer | run | total |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for database in dict.fromkeys(f.database for f in rows):
        theirs = [f for f in rows if f.database == database and f.system == THEIRS]
        if not theirs:
            continue

        base = theirs[0]
        for ours in rows:
            if ours.database != database or ours.system == THEIRS:
                continue

            lines.append(
                f"| {database} | {ours.system} | {ours.claim_batch}"
                f" | {ours.defer_rate / base.defer_rate:.2f}x"
                f" | {ours.run_rate / base.run_rate:.2f}x"
                f" | {ours.total_rate / base.total_rate:.2f}x |"
            )

    return "\n".join(lines)


async def measure(
    label: str, url: str | None, args: argparse.Namespace
) -> tuple[list[Figures], list[Figures]]:
    """Each variant ``--repeat`` times, interleaved so that load from outside
    the benchmark falls on all of them alike: the medians, and every try."""
    variants = [Variant(OURS, batch) for batch in args.claim_batch]
    if args.what_if:
        variants.append(Variant(OURS_WITHOUT_PING, max(args.claim_batch), False))

    if not args.skip_procrastinate:
        variants.append(Variant(THEIRS))

    tries: dict[Variant, list[Figures]] = {variant: [] for variant in variants}
    with bench_database(url) as server:
        for _ in range(args.repeat):
            for variant in variants:
                if variant.system == THEIRS:
                    figures = await bench_procrastinate(
                        server.fresh(), label, args.runs, args.concurrency
                    )
                else:
                    figures = await bench_scheduler(
                        server.fresh(), label, args.runs, args.concurrency, variant
                    )

                tries[variant].append(figures)
                print(table([figures]).splitlines()[-1], flush=True)

    every = [figures for variant in variants for figures in tries[variant]]
    return [median(tries[variant]) for variant in variants], every


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a Postgres server (default: embedded)")
    parser.add_argument(
        "--both",
        action="store_true",
        help=f"the embedded Postgres, then the server at {SERVER_URL}",
    )
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--claim-batch",
        type=int,
        action="append",
        help="runs claimed per admission (repeatable; default 1 and 10)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="report the median")
    parser.add_argument("--skip-procrastinate", action="store_true")
    parser.add_argument(
        "--what-if",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the largest claim batch without the pool's pre-ping",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS / "queue-throughput.json"
    )
    args = parser.parse_args()
    args.claim_batch = args.claim_batch or [1, 10]
    configure(level="warning", fmt="json")
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    targets: list[tuple[str, str | None]] = (
        [("embedded", None), ("server", SERVER_URL)]
        if args.both
        else [("server" if args.database_url else "embedded", args.database_url)]
    )
    rows: list[Figures] = []
    every: list[Figures] = []
    print(table([]))
    for label, url in targets:
        medians, tries = await measure(label, url, args)
        rows += medians
        every += tries

    print()
    print(table(rows))
    print()
    print("amc-scheduler / procrastinate, runs per second:")
    print(ratios(rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "queue-throughput",
        "machine": machine(),
        "median_of": args.repeat,
        "load_average_after": os.getloadavg(),
        "figures": [f.as_json() for f in rows],
        "every_try": [f.as_json() for f in every],
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nfigures: {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
