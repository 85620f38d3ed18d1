"""Scale: admission latency against the size of the queue, and the daemon's memory
with 20,000 runs in flight.

    python -m benchmarks.scale                      # embedded Postgres
    python -m benchmarks.scale --database-url URL   # a server
    python -m benchmarks.scale --only admission     # or: memory

Admission latency. For 1,000, 100,000 and 1,000,000 queued runs over 100
instances in 10 accounts (AMC's limits: 10 per instance, 200 per account), a
fresh database is bulk-loaded with one INSERT ... SELECT generate_series: a
backfill of three jobs per instance, one run per job and day, with the
request body and dedupe key that ``enqueue`` would have written (checked
against ``records.dedupe_key``), its ``enqueued`` event, one run in fifty at
a higher priority, one in a hundred waiting to retry (a future
``not_before``, a failed attempt), created over the last two hours in id
order. VACUUM ANALYZE follows. Then ``queue.admit()`` is called for the
accounts in turn, on each size's database in turn (so that load from outside
the benchmark falls on every size alike), each call claiming up to
``--claims`` runs into free slots; between calls (untimed) the claimed runs
are completed through the store (submitted, then SUCCEEDED) and as many new
runs are enqueued, so the slots are free again and the queue keeps its
size. Only ``admit()`` is timed. Two series per size: with the default
aging of 1 hour, when half the backlog is older than the aging threshold,
and with an aging of 3 hours, when no queued run is old enough yet (a
backfill enqueued within the last aging period: the aging query finds
nothing). ``polls.backlog()``, which the dispatcher runs every 10 seconds,
is timed once per series. The plan of the
candidate query at the largest size is kept (EXPLAIN ANALYZE, BUFFERS).

Memory. The real daemon (``python -m scheduler run``) and the simulator
(``python -m scheduler simulate``) run as their own processes, on one
config of 10 accounts x 10 instances whose limits are raised to 200 per
instance and 2,000 per account, so that 20,000 runs can be in flight at
once. AMC's real limits are 10 and 200: this is a memory test, not a
picture of AMC. 20,000 runs are enqueued; the simulated executions last a
day, so every run stays in flight once submitted. The daemon's resident
set size (RSS, psutil) is sampled every ``--sample`` seconds until all
20,000 are pending or running and for ``--hold`` seconds after, so that
every instance is polled with all its executions in flight. Peak RSS is
reported for the daemon and, separately, the simulator.

Figures go to benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psutil
import yaml

from scheduler.logs import configure
from scheduler.store.engine import Database
from scheduler.store.migrate import upgrade
from scheduler.store.polls import backlog
from scheduler.store.queue import (
    _CANDIDATES,
    AccountLimits,
    InstanceLimit,
    admit,
    enqueue,
)
from scheduler.store.records import NewRun, RunRecord, dedupe_key

from .database import bench_database
from .queue_throughput import SERVER_URL, complete, libpq_dsn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = (1_000, 100_000, 1_000_000)
ACCOUNTS = 10
INSTANCES = 10
JOBS = 3
OWNER = "bench-scale"
MiB = 1024 * 1024

# Run number g lands on instance g % 100 (account (g % 100) / 10); m = g / 100
# numbers the instance's runs: job m % 3, day m / 3, so job and window are
# unique per instance as the dedupe key demands.
_LOAD = """
INSERT INTO runs (job, account_id, instance_id, dedupe_key, source, state,
                  priority, expected_seconds, not_before, request, max_attempts,
                  attempt, reason, created_at, updated_at)
SELECT job, account_id, instance_id,
       encode(sha256(convert_to(format(
           '{"job":%s,"parameters":{},"window":{"timeWindowEnd":%s,'
           '"timeWindowStart":%s,"timeWindowTimeZone":"UTC",'
           '"timeWindowType":"EXPLICIT"}}',
           to_json(job), to_json(window_end), to_json(window_start)),
           'UTF8')), 'hex'),
       'backfill', 'queued',
       CASE WHEN m % 50 = 0 THEN 5 ELSE 0 END,
       600 + ((instance * 7 + job_number * 13) % 10) * 300,
       CASE WHEN m % 100 = 99 THEN now() + interval '30 minutes'
            ELSE created_at END,
       jsonb_build_object('workflowId', workflow_id,
                          'timeWindowType', 'EXPLICIT',
                          'timeWindowStart', window_start,
                          'timeWindowEnd', window_end,
                          'timeWindowTimeZone', 'UTC'),
       3,
       CASE WHEN m % 100 = 99 THEN 1 ELSE 0 END,
       CASE WHEN m % 100 = 99 THEN 'execution_failed' END,
       created_at, created_at
FROM (
    SELECT g, m, instance, job_number,
           'ENTITYSCALE' || lpad((instance / 10)::text, 2, '0') AS account_id,
           'amcs' || lpad(instance::text, 3, '0') AS instance_id,
           'amcs' || lpad(instance::text, 3, '0') || '-j' || job_number AS job,
           'wf-amcs' || lpad(instance::text, 3, '0') || '-' || job_number
               AS workflow_id,
           to_char(date '2015-01-01' + m / 3, 'YYYY-MM-DD"T"00:00:00')
               AS window_start,
           to_char(date '2015-01-01' + m / 3 + 1, 'YYYY-MM-DD"T"00:00:00')
               AS window_end,
           now() - make_interval(secs => 7200.0 * ($1 - g) / $1) AS created_at
    FROM generate_series(0, $1 - 1) AS g,
         LATERAL (SELECT g / 100 AS m, g % 100 AS instance,
                         (g / 100) % 3 AS job_number) AS n
) s
ORDER BY g
"""

_LOAD_HISTORY = [
    """
    INSERT INTO events (run_id, at, from_state, to_state, reason, detail)
    SELECT id, created_at, NULL, 'queued', 'enqueued', '{"source": "backfill"}'
    FROM runs
    """,
    """
    INSERT INTO attempts (run_id, number, execution_id, amc_status, outcome,
                          reason, submitted_at, finished_at)
    SELECT id, 1, 'exec-' || id, 'FAILED', 'failed', 'Internal error',
           created_at, created_at + interval '10 minutes'
    FROM runs WHERE attempt = 1
    """,
    """
    INSERT INTO events (run_id, at, from_state, to_state, reason, attempt)
    SELECT id, created_at + interval '10 minutes', 'running', 'queued',
           'execution_failed', 1
    FROM runs WHERE attempt = 1
    """,
]


def accounts() -> list[AccountLimits]:
    return [
        AccountLimits(
            f"ENTITYSCALE{a:02d}",
            200,
            tuple(
                InstanceLimit(f"amcs{a * INSTANCES + i:03d}", 10)
                for i in range(INSTANCES)
            ),
        )
        for a in range(ACCOUNTS)
    ]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Latency:
    queued: int
    aging: str
    admissions: int
    claims_per_admission: float
    median_ms: float
    p95_ms: float
    load_seconds: float
    backlog_query_ms: float


class TopUp:
    """New runs for the instances whose runs were claimed, windows after the
    loaded ones, so the queue keeps its size."""

    def __init__(self) -> None:
        self.day = datetime(2060, 1, 1)

    def runs(self, claimed: list[RunRecord]) -> list[NewRun]:
        made = []
        for run in claimed:
            self.day += timedelta(days=1)
            start = self.day.strftime("%Y-%m-%dT%H:%M:%S")
            end = (self.day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
            made.append(
                NewRun(
                    job=run.job,
                    account_id=run.account_id,
                    instance_id=run.instance_id,
                    request={
                        **run.request,
                        "timeWindowStart": start,
                        "timeWindowEnd": end,
                    },
                    max_attempts=3,
                    expected_seconds=run.expected_seconds,
                    source="backfill",
                )
            )

        return made


async def load(url: str, size: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(libpq_dsn(url))
    try:
        await conn.execute(_LOAD, size)
        for statement in _LOAD_HISTORY:
            await conn.execute(statement)

        await conn.execute("VACUUM ANALYZE runs, events, attempts")
        row = await conn.fetchrow("SELECT job, request, dedupe_key FROM runs LIMIT 1")
        assert row is not None
        request = json.loads(row["request"])
        assert row["dedupe_key"] == dedupe_key(row["job"], request), "dedupe keys"
        count = await conn.fetchval("SELECT count(*) FROM runs WHERE state = 'queued'")
        assert count == size, f"{count} runs loaded, not {size}"
    finally:
        await conn.close()

    return time.perf_counter() - started


async def explain(url: str, account: AccountLimits, aging: float) -> str:
    """The plan of the candidate query, in a transaction rolled back."""
    conn = await asyncpg.connect(libpq_dsn(url))
    try:
        compiled = str(_CANDIDATES)
        for name, number in (("instance_ids", 1), ("room", 2), ("aging_seconds", 3)):
            compiled = compiled.replace(f":{name}", f"${number}")

        async with conn.transaction():
            rows = await conn.fetch(
                f"EXPLAIN (ANALYZE, BUFFERS) {compiled}",
                [i.instance_id for i in account.instances],
                [i.limit for i in account.instances],
                aging,
            )
            plan = "\n".join(row[0] for row in rows)
            raise _Rollback(plan)
    except _Rollback as done:
        return done.plan
    finally:
        await conn.close()


class _Rollback(Exception):
    def __init__(self, plan: str) -> None:
        self.plan = plan


@dataclass
class Queue:
    """One loaded database and what its admissions measured."""

    size: int
    url: str
    db: Database
    load_seconds: float
    top_up: TopUp = field(default_factory=lambda: TopUp())
    work: dict[str, float] = field(default_factory=dict)
    backlog_ms: float = 0.0
    latencies: list[float] = field(default_factory=list)
    claimed: int = 0

    async def admit_once(
        self, account: AccountLimits, aging: float, claims: int
    ) -> float:
        """One timed admission, then (untimed) its runs completed and replaced."""
        started = time.perf_counter()
        admission = await admit(
            self.db,
            account,
            owner=OWNER,
            lease_seconds=120,
            max_claims=claims,
            backlog=self.work,
            aging_seconds=aging,
        )
        elapsed = (time.perf_counter() - started) * 1000
        assert admission.claimed, "an admission found no free slot to claim into"
        for run in admission.claimed:
            await complete(self.db, run, OWNER)

        await enqueue(self.db, self.top_up.runs(admission.claimed))
        self.claimed += len(admission.claimed)
        return elapsed


async def series(
    queues: list[Queue], label: str, aging: float, count: int, claims: int
) -> list[Latency]:
    """``count`` admissions on each queue, taken in turn, so that load from
    outside the benchmark falls on every size alike."""
    limits = accounts()
    for queue in queues:
        started = time.perf_counter()
        found = await backlog(queue.db)
        queue.backlog_ms = (time.perf_counter() - started) * 1000
        queue.work = {instance: b.work for instance, b in found.items()}
        queue.latencies = []
        queue.claimed = 0

    # The first round of accounts warms caches and is not counted.
    for n in range(len(limits) + count):
        for queue in queues:
            elapsed = await queue.admit_once(limits[n % len(limits)], aging, claims)
            if n < len(limits):
                queue.claimed = 0
            else:
                queue.latencies.append(elapsed)

    return [
        Latency(
            queue.size,
            label,
            count,
            queue.claimed / count,
            statistics.median(queue.latencies),
            percentile(queue.latencies, 0.95),
            queue.load_seconds,
            queue.backlog_ms,
        )
        for queue in queues
    ]


SERIES = (("1 h (half the backlog aged)", 3600.0), ("3 h (none aged)", 10800.0))


async def measure_admission(
    server_url: str | None, args: argparse.Namespace
) -> tuple[list[Latency], str]:
    rows: list[Latency] = []
    queues: list[Queue] = []
    with bench_database(server_url) as server:
        try:
            for size in args.sizes:
                url = server.fresh()
                db = Database(url, Path("unused"))
                await db.open()
                await upgrade(db)
                queues.append(Queue(size, url, db, await load(url, size)))
                print(f"loaded {size:,} queued runs in {queues[-1].load_seconds:.0f} s")

            for label, aging in SERIES:
                found = await series(queues, label, aging, args.admissions, args.claims)
                rows += found
                print(latency_table(found), flush=True)

            largest = max(queues, key=lambda q: q.size)
            plans = [
                f"-- aging {label}\n" + await explain(largest.url, accounts()[0], aging)
                for label, aging in SERIES
            ]
        finally:
            for queue in queues:
                await queue.db.close()

    return rows, "\n\n".join(plans)


def latency_table(rows: list[Latency]) -> str:
    lines = [
        "| queued runs | aging | admissions | claims each | median ms | p95 ms"
        " | backlog() ms | load s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.queued:,} | {r.aging} | {r.admissions}"
            f" | {r.claims_per_admission:.1f} | {r.median_ms:.1f} | {r.p95_ms:.1f}"
            f" | {r.backlog_query_ms:.0f} | {r.load_seconds:.0f} |"
        )

    return "\n".join(lines)


def ratios(rows: list[Latency]) -> list[dict[str, Any]]:
    """Latency at each size over that at the smallest, per aging series."""
    found = []
    for aging in dict.fromkeys(r.aging for r in rows):
        same = sorted((r for r in rows if r.aging == aging), key=lambda r: r.queued)
        base = same[0]
        for r in same[1:]:
            found.append(
                {
                    "aging": aging,
                    "queued": r.queued,
                    "against": base.queued,
                    "median_ratio": r.median_ms / base.median_ms,
                    "p95_ratio": r.p95_ms / base.p95_ms,
                }
            )

    return found


# Memory


@dataclass
class Memory:
    in_flight_target: int
    reached: int = 0
    seconds_to_all_in_flight: float | None = None
    daemon_peak_mib: float = 0.0
    daemon_peak_before_all_mib: float = 0.0
    daemon_final_mib: float = 0.0
    simulator_peak_mib: float = 0.0
    samples: int = 0
    # The daemon's log lines at warning and above, by event.
    daemon_warnings: dict[str, int] = field(default_factory=dict)
    # AMC requests the simulator answered while all runs were in flight.
    requests_during_hold: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, int, float]] = field(default_factory=list)


def warnings_in(log: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue

        if isinstance(event, dict) and event.get("level") in ("warning", "error"):
            name = str(event.get("event"))
            found[name] = found.get(name, 0) + 1

    return found


def memory_config(url: str, path: Path, runs: int) -> list[dict[str, Any]]:
    """The daemon's and the simulator's config; returns its jobs."""
    instances = [
        (f"ENTITYMEM{a:02d}", f"amcm{a * INSTANCES + i:03d}")
        for a in range(ACCOUNTS)
        for i in range(INSTANCES)
    ]
    jobs = [
        {
            "name": f"{instance}-j{k}",
            "instance": instance,
            "workflow_id": f"wf-{instance}-{k}",
            "time_window": {"type": "MOST_RECENT_DAY"},
            # Yearly, so that start-up enqueues nothing; the runs come below.
            "schedule": "0 0 1 1 *",
        }
        for _, instance in instances
        for k in range(2)
    ]
    per_instance = runs // len(instances)
    document = {
        "amc": {
            "api_url": url,
            "token_url": f"{url}/auth/o2/token",
            "client_id": "sim-client-id",
            "client_secret": "sim-client-secret",
            "refresh_token": "Atzr|sim-refresh-token",
            "requests_per_second": 1000,
            "burst": 200,
            "simulator": {
                "speed": 1,
                "duration": "24h",
                "duration_sigma": 0.05,
                "privacy_repeats": 1000,
            },
        },
        "accounts": [
            {
                "id": f"ENTITYMEM{a:02d}",
                "marketplace_id": "ATVPDKIKX0DER",
                "max_parallel": INSTANCES * per_instance,
                "instances": [
                    {"id": f"amcm{a * INSTANCES + i:03d}", "max_parallel": per_instance}
                    for i in range(INSTANCES)
                ],
            }
            for a in range(ACCOUNTS)
        ],
        "jobs": jobs,
        "dispatcher": {
            "admit_interval": "1s",
            "submit_concurrency": 64,
            "expected_duration": "24h",
            # Every instance is listed, all its executions in flight, within
            # the hold that follows.
            "poll_max": "30s",
        },
        "server": {"port": 0},
        "logging": {"level": "warning", "format": "json"},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return jobs


async def enqueue_memory_runs(
    database_url: str, config: Path, jobs: list[dict[str, Any]], runs: int
) -> None:
    from scheduler.config import load as load_config
    from scheduler.jobs import build_run
    from scheduler.windows import explicit

    settings = load_config(config).settings
    db = Database(database_url, Path("unused"))
    await db.open()
    try:
        await upgrade(db)
        now = datetime.now(UTC)
        origin = datetime(2024, 1, 1, tzinfo=UTC)
        batch: list[NewRun] = []
        for n in range(runs):
            job = settings.job(jobs[n % len(jobs)]["name"])
            day = origin + timedelta(days=n // len(jobs))
            window = explicit(day, day + timedelta(days=1))
            batch.append(build_run(settings, job, now, source="bench", window=window))
            if len(batch) == 500:
                await enqueue(db, batch)
                batch = []

        if batch:
            await enqueue(db, batch)
    finally:
        await db.close()


@contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process whose output goes to ``log`` (a pipe left unread would
    fill and stop it)."""
    with log.open("wb") as output:
        child = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


async def simulator_url(child: subprocess.Popen[bytes], log: Path) -> str:
    """The URL from the simulator's ``simulator_started`` line."""
    for _ in range(600):
        text = await asyncio.to_thread(log.read_text)
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue

            if event.get("event") == "simulator_started":
                return str(event["url"])

        if child.poll() is not None:
            break

        await asyncio.sleep(0.1)

    raise SystemExit(f"the simulator did not start; see {log}")


def requests_served(url: str) -> dict[str, int]:
    """The simulator's request counters, by kind (GET /sim/stats)."""
    with urllib.request.urlopen(f"{url}/sim/stats", timeout=60) as answer:
        counts: dict[str, int] = json.loads(answer.read())["requests"]
        return counts


def rss(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / MiB
    except psutil.Error:
        return 0.0


async def in_flight(database_url: str) -> int:
    conn = await asyncpg.connect(libpq_dsn(database_url))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM runs WHERE state IN ('pending', 'running')"
            )
        )
    finally:
        await conn.close()


async def measure_memory(server_url: str | None, args: argparse.Namespace) -> Memory:
    memory = Memory(args.in_flight)
    with (
        bench_database(server_url) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        database_url = server.fresh()
        config = Path(tmp) / "memory.yaml"
        # The simulator reads accounts and limits from the same file.
        jobs = memory_config("http://127.0.0.1:1", config, args.in_flight)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        simulate = [sys.executable, "-m", "scheduler", "simulate"]
        simulate += ["--config", str(config), "--port", "0", "--speed", "1"]
        simulator_log = Path(tmp) / "simulator.log"
        with process(simulate, env, simulator_log) as simulator:
            url = await simulator_url(simulator, simulator_log)
            memory_config(url, config, args.in_flight)
            await enqueue_memory_runs(database_url, config, jobs, args.in_flight)
            daemon_env = {**env, "AMC_SCHEDULER_DATABASE_URL": database_url}
            run = [sys.executable, "-m", "scheduler", "run", "--config", str(config)]
            daemon_log = Path(tmp) / "daemon.log"
            with process(run, daemon_env, daemon_log) as daemon:
                started = time.monotonic()
                all_at: float | None = None
                at_all: dict[str, int] = {}
                next_count = 0.0
                while True:
                    if daemon.poll() is not None:
                        raise SystemExit(f"the daemon exited with {daemon.returncode}")

                    now = time.monotonic()
                    daemon_mib = rss(daemon.pid)
                    memory.daemon_peak_mib = max(memory.daemon_peak_mib, daemon_mib)
                    memory.simulator_peak_mib = max(
                        memory.simulator_peak_mib, rss(simulator.pid)
                    )
                    memory.samples += 1
                    if all_at is None:
                        memory.daemon_peak_before_all_mib = memory.daemon_peak_mib

                    if now >= next_count:
                        memory.reached = await in_flight(database_url)
                        memory.timeline.append(
                            (round(now - started, 1), memory.reached, daemon_mib)
                        )
                        next_count = now + 2.0
                        if all_at is None and memory.reached >= args.in_flight:
                            all_at = now
                            at_all = await asyncio.to_thread(requests_served, url)
                            memory.seconds_to_all_in_flight = now - started
                            print(
                                f"{memory.reached:,} in flight after"
                                f" {now - started:.0f} s; holding {args.hold:.0f} s",
                                flush=True,
                            )

                    if all_at is not None and now - all_at >= args.hold:
                        break

                    if now - started > args.timeout:
                        print("timed out before all runs were in flight", flush=True)
                        break

                    await asyncio.sleep(args.sample)

                memory.daemon_final_mib = rss(daemon.pid)
                if all_at is not None:
                    at_end = await asyncio.to_thread(requests_served, url)
                    memory.requests_during_hold = {
                        kind: at_end[kind] - at_all.get(kind, 0) for kind in at_end
                    }

            memory.daemon_warnings = await asyncio.to_thread(warnings_in, daemon_log)

    return memory


def memory_table(memory: Memory) -> str:
    reached = (
        f"{memory.seconds_to_all_in_flight:.0f} s"
        if memory.seconds_to_all_in_flight is not None
        else "not reached"
    )
    return "\n".join(
        [
            "| runs in flight | time to all in flight | daemon peak RSS MiB"
            " | daemon peak before all in flight | simulator peak RSS MiB |",
            "| --- | --- | --- | --- | --- |",
            f"| {memory.reached:,} of {memory.in_flight_target:,} | {reached}"
            f" | {memory.daemon_peak_mib:.0f} | {memory.daemon_peak_before_all_mib:.0f}"
            f" | {memory.simulator_peak_mib:.0f} |",
            "",
            "AMC requests while all were in flight: "
            + ", ".join(f"{k} {v}" for k, v in memory.requests_during_hold.items()),
            "daemon warnings: "
            + (
                ", ".join(f"{k} x{v}" for k, v in memory.daemon_warnings.items())
                or "none"
            ),
        ]
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a Postgres server (default: embedded)")
    parser.add_argument(
        "--both",
        action="store_true",
        help=f"the embedded Postgres, then the server at {SERVER_URL}",
    )
    parser.add_argument("--only", choices=["both", "admission", "memory"])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--admissions", type=int, default=200)
    parser.add_argument("--claims", type=int, default=10, help="max claims per admit")
    parser.add_argument("--in-flight", type=int, default=20_000)
    parser.add_argument("--hold", type=float, default=75.0)
    parser.add_argument("--sample", type=float, default=0.25)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    configure(level="warning", fmt="json")
    targets: list[tuple[str, str | None]] = (
        [("embedded", None), ("server", SERVER_URL)]
        if args.both
        else [("server" if args.database_url else "embedded", args.database_url)]
    )
    document: dict[str, Any] = {
        "benchmark": "scale",
        "machine": {"cpus": os.cpu_count()},
        "databases": {},
    }
    if args.only in ("admission", "memory") and args.output.exists():
        # One part measured again: the other part's figures stay.
        document = json.loads(args.output.read_text())

    for label, url in targets:
        entry: dict[str, Any] = document["databases"].get(label, {})
        print(f"\n## {label}", flush=True)
        if args.only in (None, "both", "admission"):
            print(latency_table([]), flush=True)
            rows, plan = await measure_admission(url, args)
            entry["admission"] = [asdict(r) for r in rows]
            entry["admission_ratios"] = ratios(rows)
            entry["candidate_plan"] = plan
            print()
            print(latency_table(rows))
            for ratio in entry["admission_ratios"]:
                print(
                    f"aging {ratio['aging']}: {ratio['queued']:,} queued /"
                    f" {ratio['against']:,}: median {ratio['median_ratio']:.2f}x,"
                    f" p95 {ratio['p95_ratio']:.2f}x"
                )

            print(f"\ncandidate query at {max(args.sizes):,} queued runs:\n{plan}")

        if args.only in (None, "both", "memory"):
            memory = await measure_memory(url, args)
            entry["memory"] = asdict(memory)
            print()
            print(memory_table(memory))

        document["databases"][label] = entry
        document["load_average_after"] = os.getloadavg()
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n")

    print(f"\nfigures: {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
