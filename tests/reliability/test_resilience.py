"""Crash, database outage, AMC faults, replicas and load, with real processes.

Quick by default (CI); ``AMC_SCHEDULER_RELIABILITY=long`` runs the long
versions. Each suite writes its figures to benchmarks/results/reliability-*.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from scheduler.store.embedded import EmbeddedPostgres
from scheduler.store.engine import Database
from scheduler.store.migrate import upgrade
from tests.support.cluster import cluster, history_problems
from tests.support.daemon import poll_until

LONG = os.environ.get("AMC_SCHEDULER_RELIABILITY") == "long"
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# The long versions outlast the suite-wide timeout by design.
pytestmark = [pytest.mark.timeout(3600)] if LONG else []


def record(name: str, figures: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    figures = {"scale": "long" if LONG else "quick", **figures}
    (RESULTS / f"reliability-{name}.json").write_text(json.dumps(figures, indent=2))


def assert_clean(stats: dict[str, Any], database_url: str, limit: int = 10) -> None:
    assert stats["duplicates"] == 0
    assert stats["limit_violations"] == 0
    assert max(stats["max_concurrency"]["instances"].values()) <= limit
    assert history_problems(database_url) == []


def test_crash_kills_lose_and_duplicate_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """SIGKILL at random moments of a drain: every run ends once, limits held."""
    kills = 50 if LONG else 5
    per_instance = 167
    slow = {"faults": {"slow_rate": 0.2, "slow_by": "0.2s"}}
    rng = random.Random(7)
    with cluster(tmp_path, database_url, speed=2400, simulator=slow) as rig:
        total = rig.enqueue(per_instance=per_instance) + 3
        for _ in range(kills):
            daemon = rig.start_daemon()
            daemon.wait_for("service_started", timeout=60)
            # Kill mid-create half the time, at a random moment otherwise.
            if rng.random() < 0.5:
                poll_until(
                    lambda: (
                        rig.states().get("submitting", 0) > 0
                        or set(rig.states()) <= {"succeeded"}
                    ),
                    timeout=60,
                    interval=0.02,
                )
            else:
                time.sleep(rng.uniform(0.2, 2.0))

            daemon.stop(signal.SIGKILL)

        final = rig.start_daemon()
        states = rig.wait_all_terminal(within=300)
        stats = rig.stats()
        assert final.stop() == 0

    assert states == {"succeeded": total}
    assert stats["executions"]["total"] == total
    assert_clean(stats, database_url)
    record(
        "crash",
        {
            "runs": total,
            "kills": kills,
            "duplicates": stats["duplicates"],
            "limit_violations": stats["limit_violations"],
            "lost": 0,
        },
    )


def test_database_outage_is_survived(tmp_path: Path) -> None:
    """Postgres stops mid-drain: the daemon stays up, /health says 503, then 200."""
    outages = 5 if LONG else 1
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()

    async def migrate() -> None:
        db = Database(url, Path("unused"))
        await db.open()
        try:
            await upgrade(db)
        finally:
            await db.close()

    asyncio.run(migrate())
    down_statuses: list[int] = []
    try:
        (tmp_path / "c").mkdir()
        with cluster(tmp_path / "c", url, speed=600) as rig:
            total = rig.enqueue(per_instance=30 if LONG else 20) + 3
            daemon = rig.start_daemon()
            daemon.wait_for("service_started")
            for _ in range(outages):
                poll_until(lambda: rig.states().get("succeeded", 0) > 0, timeout=60)
                server.stop()
                status = poll_until(
                    lambda: (code := daemon.get("/health")[0]) == 503 and code,
                    timeout=30,
                )
                down_statuses.append(status)
                assert daemon.process is not None
                assert daemon.process.poll() is None
                time.sleep(2)
                server.start()
                poll_until(lambda: daemon.get("/health")[0] == 200, timeout=60)

            states = rig.wait_all_terminal(within=180)
            stats = rig.stats()
            assert daemon.stop() == 0
            assert daemon.find("health_check_failed")
    finally:
        server.stop()

    assert down_statuses == [503] * outages
    assert states == {"succeeded": total}
    assert stats["duplicates"] == 0
    assert stats["executions"]["total"] == total
    record("outage", {"runs": total, "outages": outages, "duplicates": 0})


def test_amc_faults_fail_no_run_and_duplicate_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """20 % 5xx (half after the create), 10 % throttles, malformed and slow answers."""
    faults = {
        "faults": {
            "server_error_rate": 0.2,
            "after_create_share": 0.5,
            "throttle_rate": 0.1,
            "malformed_rate": 0.03,
            "slow_rate": 0.05,
            "slow_by": "0.5s",
        }
    }
    with cluster(tmp_path, database_url, speed=1200, simulator=faults) as rig:
        total = rig.enqueue(per_instance=100 if LONG else 40) + 3
        daemon = rig.start_daemon()
        states = rig.wait_all_terminal(within=300)
        stats = rig.stats()
        assert daemon.stop() == 0
        adopted = len(daemon.find("execution_adopted"))

    assert states == {"succeeded": total}
    assert stats["executions"]["total"] == total
    assert stats["faults"]["after_create"] > 0
    assert_clean(stats, database_url)
    record(
        "faults",
        {"runs": total, "faults": stats["faults"], "adopted": adopted, "duplicates": 0},
    )


def test_replicas_hold_limits_while_one_is_killed(
    tmp_path: Path, database_url: str
) -> None:
    """Three daemons on one database, one killed and restarted again and again."""
    kills = 20 if LONG else 4
    with cluster(tmp_path, database_url, speed=1200) as rig:
        total = rig.enqueue(per_instance=100 if LONG else 40) + 3
        steady = [rig.start_daemon(), rig.start_daemon()]
        for _ in range(kills):
            victim = rig.start_daemon()
            victim.wait_for("service_started")
            time.sleep(random.uniform(0.5, 2.0))
            victim.stop(signal.SIGKILL)

        states = rig.wait_all_terminal(within=300)
        stats = rig.stats()
        for daemon in steady:
            assert daemon.stop() == 0

    assert states == {"succeeded": total}
    assert stats["executions"]["total"] == total
    assert stats["rejected_creates"]["limit"] == 0
    assert stats["max_concurrency"]["accounts"]["ENTITYCLUSTER"] <= 15
    assert_clean(stats, database_url)
    record("replicas", {"runs": total, "replicas": 3, "kills": kills, "duplicates": 0})


def test_load_drains_within_limits_and_bounded_memory(
    tmp_path: Path, database_url: str
) -> None:
    """Runs over 100 instances in 10 accounts: no limit exceeded, memory bounded."""
    shape = [
        {
            "id": f"ENTITYLOAD{a:02d}",
            "marketplace_id": "ATVPDKIKX0DER",
            "max_parallel": 60,
            "instances": [
                {"id": f"amcl{a:02d}{i}", "max_parallel": 10} for i in range(10)
            ],
        }
        for a in range(10)
    ]
    per_instance = 100 if LONG else 20
    with cluster(tmp_path, database_url, speed=1200, account_list=shape) as rig:
        total = rig.enqueue(per_instance=per_instance) + 100
        daemon = rig.start_daemon()
        assert daemon.process is not None
        process = psutil.Process(daemon.process.pid)
        peak = 0
        deadline = time.monotonic() + 600
        while True:
            peak = max(peak, process.memory_info().rss)
            states = rig.states()
            if states and set(states) <= {"succeeded", "failed", "cancelled"}:
                break

            assert time.monotonic() < deadline, f"load not drained: {states}"
            time.sleep(0.5)

        stats = rig.stats()
        assert daemon.stop() == 0

    assert states == {"succeeded": total}
    assert stats["executions"]["total"] == total
    assert max(stats["max_concurrency"]["accounts"].values()) <= 60
    assert_clean(stats, database_url)
    assert peak < 400 * 2**20
    record(
        "load",
        {
            "runs": total,
            "instances": 100,
            "accounts": 10,
            "peak_rss_mib": round(peak / 2**20, 1),
            "duplicates": 0,
        },
    )
