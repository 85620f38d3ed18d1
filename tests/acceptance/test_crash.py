"""The daemon as a real process: killed mid-drain, restarted, and doubled."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.cluster import cluster, history_problems
from tests.support.daemon import poll_until


def test_sigkill_mid_drain_completes_every_run_exactly_once(
    tmp_path: Path, database_url: str
) -> None:
    """SIGKILL twice mid-drain: every run ends once at AMC, history unbroken."""
    slow = {"faults": {"slow_rate": 0.3, "slow_by": "0.3s"}}
    with cluster(tmp_path, database_url, simulator=slow) as rig:
        total = rig.enqueue(per_instance=20)
        for kill in range(2):
            daemon = rig.start_daemon()
            daemon.wait_for("service_started")
            # Kill while creates are in flight, the moment a duplicate would be born.
            poll_until(
                lambda: rig.states().get("submitting", 0) >= 2,
                timeout=60,
                interval=0.02,
            )
            assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL, f"kill {kill}"

        final = rig.start_daemon()
        states = rig.wait_all_terminal()
        stats = rig.stats()
        assert final.stop() == 0
        assert final.find("submission_recovering")

    # Each of the three unscheduled jobs ran once at the first start, never again.
    assert states == {"succeeded": total + 3}
    assert stats["duplicates"] == 0
    assert stats["executions"]["total"] == total + 3
    assert stats["limit_violations"] == 0
    assert max(stats["max_concurrency"]["instances"].values()) <= 10
    assert history_problems(database_url) == []


def test_two_daemons_share_one_database(tmp_path: Path, database_url: str) -> None:
    """Two daemon processes: limits held, no duplicates, all runs done."""
    with cluster(tmp_path, database_url) as rig:
        total = rig.enqueue(per_instance=15)
        first = rig.start_daemon()
        second = rig.start_daemon()
        states = rig.wait_all_terminal()
        stats = rig.stats()
        assert first.stop() == 0
        assert second.stop() == 0
        submitted_by = {
            d.wait_for("service_started")["worker_id"]: len(d.find("run_submitted"))
            for d in (first, second)
        }

    assert states == {"succeeded": total + 3}
    assert stats["duplicates"] == 0
    assert stats["limit_violations"] == 0
    assert stats["rejected_creates"]["limit"] == 0
    assert stats["max_concurrency"]["accounts"]["ENTITYCLUSTER"] <= 15
    assert sum(submitted_by.values()) == total + 3
    assert history_problems(database_url) == []
