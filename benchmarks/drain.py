"""Drain the standard workload: the scheduler (the real daemon) against the
strategy of the public AWS workflow-manager tools, same simulator, same runs.

    python -m benchmarks.drain                 # 20- and 5-minute workloads
    python -m benchmarks.drain --median 20m    # one of them

Reports makespan against the lower bound, utilisation while runs waited for
the limiting slots, AMC requests per run by kind, creates refused for limits,
and how long a freed slot stayed free; writes benchmarks/results/*.json and
docs/drain.png. Times are simulated seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from scheduler.amc.auth import Credentials
from scheduler.amc.client import AccountRef, AmcClient, build_client
from scheduler.amc.errors import LimitReached, Throttled, TransientError
from scheduler.amc.simoptions import plan_key
from scheduler.durations import parse_duration
from scheduler.logs import configure

from .analysis import Report, analyse, intervals, slots_over_time
from .database import bench_database
from .workloads import Workload, standard

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CREDENTIALS = Credentials(
    "sim-client-id", "sim-client-secret", "Atzr|sim-refresh-token"
)


def speed_for(median: float) -> float:
    """Simulated seconds per real second: a run lasts the same real time at
    every median, so fixed overheads weigh the same."""
    return 6.0 * median / 60.0


def write_plan(workload: Workload, path: Path) -> None:
    plan = {
        "accounts": [
            {
                "id": a.id,
                "marketplace_id": a.marketplace_id,
                "limit": a.limit,
                "instances": [{"id": i.id, "limit": i.limit} for i in a.instances],
            }
            for a in workload.accounts
        ],
        "durations": {
            plan_key(r.instance, r.workflow_id, r.window_start): r.duration
            for r in workload.runs
        },
    }
    path.write_text(json.dumps(plan))


@contextmanager
def simulator(plan: Path, speed: float) -> Iterator[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.simserver",
            "--plan",
            str(plan),
            "--speed",
            str(speed),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        url = str(json.loads(line)["url"])
        yield url
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def sim_get(url: str, path: str) -> Any:
    with urllib.request.urlopen(f"{url}{path}", timeout=60) as answer:
        return json.loads(answer.read())


# The scheduler


def daemon_config(
    workload: Workload, url: str, speed: float, path: Path, poll_waste: str = "30s"
) -> None:
    def scaled(simulated: str) -> float:
        return round(parse_duration(simulated).total_seconds() / speed, 4)

    document = {
        "amc": {
            "api_url": url,
            "token_url": f"{url}/auth/o2/token",
            "client_id": CREDENTIALS.client_id,
            "client_secret": CREDENTIALS.client_secret,
            "refresh_token": CREDENTIALS.refresh_token,
            # Real seconds: at this speed, about 8 requests per simulated second.
            "requests_per_second": 1000,
            "burst": 200,
        },
        "accounts": [
            {
                "id": a.id,
                "marketplace_id": a.marketplace_id,
                "max_parallel": a.limit,
                "instances": [
                    {"id": i.id, "max_parallel": i.limit} for i in a.instances
                ],
            }
            for a in workload.accounts
        ],
        # The jobs are named so that their history is learned; a yearly
        # schedule keeps them from being enqueued at start-up.
        "jobs": [
            {
                "name": j.name,
                "instance": j.instance,
                "workflow_id": j.workflow_id,
                "schedule": "0 0 1 1 *",
            }
            for j in workload.jobs
        ],
        # AMC-scale timings, divided by the simulator's speed.
        "dispatcher": {
            "poll_min": scaled("15s"),
            "poll_max": scaled("5m"),
            "poll_waste": scaled(poll_waste),
            "admit_interval": scaled("5s"),
            "retry_base": scaled("30s"),
            "retry_max": scaled("30m"),
            "expected_duration": scaled("20m"),
            "aging": scaled("1h"),
            "lease": 30,
            "submit_concurrency": 32,
        },
        "server": {"port": 0},
        "logging": {
            "level": os.environ.get("BENCH_LOG_LEVEL", "warning"),
            "format": "json",
        },
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))


async def seed_history(db: Any, workload: Workload, speed: float, per_job: int) -> None:
    """Past successes of every job, as a scheduler that ran them before has."""
    import random

    from sqlalchemy import insert

    from scheduler.store.models import attempts, runs
    from scheduler.store.records import dedupe_key

    rng = random.Random(99)
    now = datetime.now(UTC)
    async with db.begin() as conn:
        for job in workload.jobs:
            for n in range(per_job):
                seconds = job.median * 2.718281828 ** rng.gauss(0, 0.15) / speed
                request = {
                    "workflowId": job.workflow_id,
                    "timeWindowType": "EXPLICIT",
                    "timeWindowStart": f"2024-01-{n + 1:02d}T00:00:00",
                    "timeWindowEnd": f"2024-01-{n + 2:02d}T00:00:00",
                    "timeWindowTimeZone": "UTC",
                }
                ended = now - timedelta(hours=n + 1)
                started = ended - timedelta(seconds=seconds)
                run_id = await conn.scalar(
                    insert(runs)
                    .values(
                        job=job.name,
                        account_id=next(
                            a.id
                            for a in workload.accounts
                            for i in a.instances
                            if i.id == job.instance
                        ),
                        instance_id=job.instance,
                        dedupe_key=dedupe_key(job.name, request),
                        source="history",
                        state="succeeded",
                        expected_seconds=seconds,
                        request=request,
                        max_attempts=3,
                        attempt=1,
                        execution_id=f"history-{job.name}-{n}",
                        submitted_at=started,
                        finished_at=ended,
                    )
                    .returning(runs.c.id)
                )
                await conn.execute(
                    insert(attempts).values(
                        run_id=run_id,
                        number=1,
                        execution_id=f"history-{job.name}-{n}",
                        outcome="succeeded",
                        amc_create_time=started,
                        amc_end_time=ended,
                        submitted_at=started,
                        finished_at=ended,
                    )
                )


async def enqueue_workload(
    database_url: str,
    workload: Workload,
    config: Path,
    history: int = 0,
    speed: float = 1.0,
) -> None:
    from scheduler.config import load
    from scheduler.jobs import build_run
    from scheduler.store.engine import Database
    from scheduler.store.migrate import upgrade
    from scheduler.store.queue import enqueue
    from scheduler.windows import explicit, parse_amc_time

    settings = load(config).settings
    db = Database(database_url, Path("unused"))
    await db.open()
    try:
        await upgrade(db)
        if history:
            await seed_history(db, workload, speed, history)

        # Expected run times as the history says, as a running daemon has them.
        from scheduler.polling import fit
        from scheduler.store.polls import recent_durations

        durations = await recent_durations(db, [j.name for j in workload.jobs])
        learned = {
            job: model.median
            for job, values in durations.items()
            if (model := fit(values)) is not None
        }
        now = datetime.now(UTC)
        batch = []
        for run in workload.runs:
            window = explicit(
                parse_amc_time(run.window_start), parse_amc_time(run.window_end)
            )
            batch.append(
                build_run(
                    settings,
                    settings.job(run.job),
                    now,
                    source="bench",
                    window=window,
                    learned=learned,
                )
            )
            if len(batch) == 500:
                await enqueue(db, batch)
                batch = []

        if batch:
            await enqueue(db, batch)
    finally:
        await db.close()


async def unfinished(database_url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(
        database_url.replace("postgresql+asyncpg", "postgresql")
    )
    try:
        value = await conn.fetchval(
            "SELECT count(*) FROM runs"
            " WHERE state NOT IN ('succeeded', 'failed', 'cancelled')"
        )
        return int(value)
    finally:
        await conn.close()


async def run_ours(
    workload: Workload,
    plan: Path,
    speed: float,
    database_url: str,
    history: int,
    poll_waste: str,
) -> tuple[Report, Timeline]:
    with simulator(plan, speed) as url, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        daemon_config(workload, url, speed, config, poll_waste)
        await enqueue_workload(database_url, workload, config, history, speed)
        env = {**os.environ, "AMC_SCHEDULER_DATABASE_URL": database_url}
        daemon = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
            [sys.executable, "-m", "scheduler", "run", "--config", str(config)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            while await unfinished(database_url):
                if daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited with {daemon.returncode}")

                await asyncio.sleep(1.0)
        finally:
            daemon.terminate()
            daemon.wait(60)

        return collect("scheduler", workload, url, speed)


Timeline = tuple[list[float], list[int]]


def collect(
    strategy: str, workload: Workload, url: str, speed: float
) -> tuple[Report, Timeline]:
    """The report of a finished drain, and the binding account's slots over time."""
    executions = sim_get(url, "/sim/executions")
    stats = sim_get(url, "/sim/stats")
    t0 = min(e["created_at"] for e in executions)
    spans = intervals(executions, t0, speed)
    timeline = slots_over_time(spans, workload.binding(), workload.median / 10)
    return analyse(strategy, workload, executions, stats, t0, speed), timeline


# The baseline: what the public AWS workflow-manager tools do


class Baseline:
    """Before each create, count PENDING and RUNNING executions with the list
    call; when the instance is full wait 600 simulated seconds; poll every
    execution with a GET every 300 simulated seconds."""

    def __init__(self, client: AmcClient, workload: Workload, speed: float) -> None:
        self.client = client
        self.workload = workload
        self.speed = speed
        self.polls: set[asyncio.Task[None]] = set()

    def _sleep(self, simulated: float) -> Any:
        return asyncio.sleep(simulated / self.speed)

    async def instance(self, account: AccountRef, instance_id: str, limit: int) -> None:
        queue = deque(r for r in self.workload.runs if r.instance == instance_id)
        while queue:
            since = datetime(2020, 1, 1, tzinfo=UTC)
            in_flight = 0
            async for execution in self.client.list_executions(
                account, instance_id, min_creation_time=since, page_size=1000
            ):
                in_flight += execution.status in ("PENDING", "RUNNING")

            if in_flight >= limit:
                await self._sleep(600)
                continue

            run = queue[0]
            body = {
                "workflowId": run.workflow_id,
                "timeWindowType": "EXPLICIT",
                "timeWindowStart": run.window_start,
                "timeWindowEnd": run.window_end,
                "timeWindowTimeZone": "UTC",
            }
            try:
                created = await self.client.create_execution(account, instance_id, body)
            except (LimitReached, Throttled, TransientError):
                await self._sleep(600)
                continue

            queue.popleft()
            task = asyncio.create_task(self.poll(account, instance_id, created.id))
            self.polls.add(task)
            task.add_done_callback(self.polls.discard)

    async def poll(
        self, account: AccountRef, instance_id: str, execution_id: str
    ) -> None:
        while True:
            await self._sleep(300)
            execution = await self.client.get_execution(
                account, instance_id, execution_id
            )
            if execution.terminal:
                return

    async def drain(self) -> None:
        await asyncio.gather(
            *(
                self.instance(AccountRef(a.id, a.marketplace_id), i.id, i.limit)
                for a in self.workload.accounts
                for i in a.instances
            )
        )
        while self.polls:
            await asyncio.gather(*list(self.polls))


async def run_baseline(
    workload: Workload, plan: Path, speed: float
) -> tuple[Report, Timeline]:
    with simulator(plan, speed) as url:
        client = build_client(
            api_url=url,
            token_url=f"{url}/auth/o2/token",
            credentials=CREDENTIALS,
            requests_per_second=1000,
            burst=200,
            max_connections=64,
        )
        try:
            await Baseline(client, workload, speed).drain()
        finally:
            await client.close()

        return collect("aws-baseline", workload, url, speed)


# Output


def table(reports: list[Report]) -> str:
    lines = [
        "| strategy | makespan (min) | lower bound | ratio"
        " | utilisation (binding account)"
        " | AMC requests per run (create / list / get) | limit refusals"
        " | freed slot refilled (median / p95 s) | duplicates |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in reports:
        per = r.requests_per_run
        lines.append(
            f"| {r.strategy} | {r.makespan / 60:.1f} | {r.lower_bound / 60:.1f}"
            f" | {r.ratio:.3f} | {r.utilisation:.3f} ({r.utilisation_binding:.3f})"
            f" | {r.total_requests_per_run:.2f} ({per.get('create', 0):.2f} /"
            f" {per.get('list', 0):.2f} / {per.get('get', 0):.2f})"
            f" | {r.limit_rejections} | {r.refill_median:.0f} / {r.refill_p95:.0f}"
            f" | {r.duplicates} |"
        )

    return "\n".join(lines)


def plot(rows: list[tuple[Workload, list[Report], dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(rows), 2, figsize=(13, 4.2 * len(rows)), squeeze=False
    )
    for (workload, reports, timelines), (left, right) in zip(rows, axes, strict=True):
        for strategy, (times, counts) in timelines.items():
            left.plot([t / 60 for t in times], counts, label=strategy, linewidth=1.2)

        left.axhline(200, color="grey", linestyle=":", linewidth=1)
        left.set_title(f"{workload.name}: executions in flight, {workload.binding()}")
        left.set_xlabel("simulated minutes")
        left.set_ylabel("slots in use (limit 200)")
        left.legend()
        names = [r.strategy for r in reports]
        ratios = [r.ratio for r in reports]
        usage = [r.utilisation for r in reports]
        positions = range(len(reports))
        right.bar(
            [p - 0.2 for p in positions],
            ratios,
            width=0.4,
            label="makespan / lower bound",
        )
        right.bar(
            [p + 0.2 for p in positions],
            usage,
            width=0.4,
            label="utilisation while waiting",
        )
        right.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        right.set_xticks(list(positions), names)
        right.set_title(f"{workload.name}: makespan and utilisation")
        for p, (ratio, use) in enumerate(zip(ratios, usage, strict=True)):
            right.annotate(f"{ratio:.2f}", (p - 0.2, ratio), ha="center", va="bottom")
            right.annotate(f"{use:.2f}", (p + 0.2, use), ha="center", va="bottom")

        # Room above the tallest bar for the legend, clear of the labels.
        right.set_ylim(0, max([*ratios, 1.0]) * 1.35)
        right.legend(loc="upper left")

    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def bench(
    median: float,
    database_url: str,
    only: str,
    runs: int,
    history: int = 5,
    poll_waste: str = "30s",
) -> tuple[Workload, list[Report], dict[str, Any]]:
    workload = standard(median=median, runs=runs)
    speed = speed_for(median)
    reports: list[Report] = []
    timelines: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.json"
        write_plan(workload, plan)
        for name in ("scheduler", "aws-baseline"):
            if only not in ("both", name):
                continue

            started = time.monotonic()
            if name == "scheduler":
                result, timeline = await run_ours(
                    workload, plan, speed, database_url, history, poll_waste
                )
            else:
                result, timeline = await run_baseline(workload, plan, speed)

            print(
                f"{workload.name} {name}: {time.monotonic() - started:.0f} s real",
                flush=True,
            )
            reports.append(result)
            timelines[name] = timeline

    return workload, reports, timelines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--median", action="append", help="median run time: 20m, 5m")
    parser.add_argument("--database-url", help="a Postgres server (default: embedded)")
    parser.add_argument(
        "--only", choices=["both", "scheduler", "aws-baseline"], default="both"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "drain.png")
    parser.add_argument("--runs", type=int, default=3000, help="runs in the workload")
    parser.add_argument(
        "--history", type=int, default=5, help="past runs per job the scheduler knows"
    )
    parser.add_argument(
        "--poll-waste", default="30s", help="dispatcher.poll_waste, simulated"
    )
    args = parser.parse_args()
    configure(level="warning", fmt="json")
    medians = [
        parse_duration(m).total_seconds() for m in (args.median or ["20m", "5m"])
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    with bench_database(args.database_url) as database_url:
        for median in medians:
            rows.append(
                await bench(
                    median,
                    database_url.fresh(),
                    args.only,
                    args.runs,
                    args.history,
                    args.poll_waste,
                )
            )

    for workload, reports, _ in rows:
        print(
            f"\n{workload.name}: {len(workload.runs)} runs,"
            f" binding {workload.binding()},"
            f" lower bound {workload.lower_bound() / 60:.1f} simulated minutes"
        )
        print(table(reports))
        if len(reports) == 2:
            ours, baseline = reports
            faster = baseline.makespan / ours.makespan
            cheaper = baseline.total_requests_per_run / ours.total_requests_per_run
            print(
                f"baseline / scheduler: makespan {faster:.2f}x,"
                f" requests per run {cheaper:.2f}x"
            )

        path = RESULTS / f"drain-{workload.name}.json"
        path.write_text(json.dumps([asdict(r) for r in reports], indent=2))

    plot(rows, args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    asyncio.run(main())
