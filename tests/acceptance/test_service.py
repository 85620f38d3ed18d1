"""The daemon as a subprocess on the in-process simulator: what operators touch."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

from scheduler.config import DATABASE_URL_ENV
from tests.support.daemon import (
    Daemon,
    base_config,
    poll_until,
    request,
    run_cli,
    write_config,
)

TOKEN = "test-token-123"
FAST = {
    "poll_min": 0.2,
    "poll_max": 2,
    "admit_interval": 0.5,
    "retry_base": 0.2,
    "retry_max": 5,
    "lease": 5,
    "expected_duration": "2s",
    "poll_waste": "0.05s",
}
JOBS = [
    {
        "name": "weekly",
        "instance": "amctest1",
        "workflow_id": "wf_weekly",
        "time_window": {"last": "7d", "align": "day"},
    },
    {
        "name": "adhoc",
        "instance": "amctest2",
        "sql": "SELECT 1 FROM t",
        "parameters": {"since": "TODAY(-3)"},
    },
]


def _config(tmp: Path, **overrides: Any) -> Path:
    document = base_config(jobs=JOBS, dispatcher=FAST, **overrides)
    return write_config(tmp / "service.yaml", document)


def _runs(daemon: Daemon, query: str = "") -> list[dict[str, Any]]:
    status, body = daemon.get(f"/api/runs{query}")
    assert status == 200
    return list(json.loads(body)["runs"])


def _post(
    daemon: Daemon, path: str, body: Any, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, answer = request("POST", daemon.url(path), body, headers=headers)
    return status, json.loads(answer)


def test_api_metrics_and_status_page(tmp_path: Path, database_url: str) -> None:
    """Start-up runs finish; the API, metrics and status page show real data."""
    env = {DATABASE_URL_ENV: database_url}
    with Daemon(_config(tmp_path), env=env) as daemon:
        daemon.wait_for("service_started")
        poll_until(
            lambda: len([r for r in _runs(daemon) if r["state"] == "succeeded"]) == 2
        )

        status, body = daemon.get("/api/jobs")
        jobs = {job["name"]: job for job in json.loads(body)["jobs"]}
        assert status == 200
        assert jobs["weekly"]["instance"] == "amctest1"
        assert jobs["adhoc"]["ad_hoc"] is True

        runs = _runs(daemon)
        adhoc = next(r for r in runs if r["job"] == "adhoc")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT00:00:00", adhoc["parameters"]["since"])
        status, body = daemon.get(f"/api/runs/{adhoc['id']}")
        detail = json.loads(body)
        assert [e["to_state"] for e in detail["events"]][:3] == [
            "queued",
            "submitting",
            "pending",
        ]
        assert detail["events"][-1]["to_state"] == "succeeded"
        assert detail["attempts"][0]["execution_id"] == adhoc["execution_id"]

        # Writes need the token; a second identical request returns the first run.
        assert _post(daemon, "/api/runs", {"job": "weekly"}, token=None)[0] == 401
        assert _post(daemon, "/api/runs", {"job": "weekly"}, token="wrong")[0] == 401
        window = {"start": "2026-04-01", "end": "2026-04-08"}
        created = _post(daemon, "/api/runs", {"job": "weekly", "window": window})
        again = _post(daemon, "/api/runs", {"job": "weekly", "window": window})
        assert created[0] == 201
        assert again[0] == 200
        assert again[1]["run"]["id"] == created[1]["run"]["id"]
        assert _post(daemon, "/api/runs", {"job": "nope"})[0] == 404
        assert _post(daemon, "/api/runs", {"job": "weekly", "colour": 1})[0] == 400
        status, body = daemon.get("/api/runs?state=bogus")
        assert status == 400
        assert json.loads(body)["error"].startswith("state: unknown 'bogus'")

        status, body = daemon.get("/metrics")
        text = body.decode()
        assert status == 200
        assert 'amc_scheduler_runs{state="succeeded"}' in text
        assert 'amc_scheduler_slot_limit{id="amctest1",scope="instance"} 10.0' in text
        assert 'amc_scheduler_amc_requests_total{call="create",outcome="ok"}' in text
        assert "amc_scheduler_run_duration_seconds_bucket" in text
        assert "amc_scheduler_queue_wait_seconds_count" in text

        status, body = daemon.get("/")
        page = body.decode()
        assert status == 200
        assert "amctest1" in page
        assert "ENTITYTEST1" in page
        assert f"<td class='num'>{adhoc['id']}</td><td>adhoc</td>" in page
        assert 'http-equiv="refresh"' in page

        status, body = daemon.get("/api/openapi.json")
        assert json.loads(body)["openapi"].startswith("3.1")
        assert daemon.stop() == 0


def test_cancel_through_the_api(tmp_path: Path, database_url: str) -> None:
    """POST /api/runs/{id}/cancel cancels at AMC; a second cancel is a 409."""
    document = {"amc": {"api_url": "simulator", "simulator": {"speed": 1, "seed": 2}}}
    env = {DATABASE_URL_ENV: database_url}
    with Daemon(_config(tmp_path, **document), env=env) as daemon:
        daemon.wait_for("run_submitted", job="weekly")
        run = next(r for r in _runs(daemon) if r["job"] == "weekly")
        status, answer = _post(daemon, f"/api/runs/{run['id']}/cancel", None)
        assert status == 200
        assert answer["run"]["state"] == "cancelled"
        assert _post(daemon, f"/api/runs/{run['id']}/cancel", None)[0] == 409
        assert _post(daemon, "/api/runs/424242/cancel", None)[0] == 404
        assert (
            _post(daemon, f"/api/runs/{run['id']}/cancel", None, token=None)[0] == 401
        )


def test_reload_adds_a_job_and_refuses_a_broken_file(
    tmp_path: Path, database_url: str
) -> None:
    """SIGHUP: a job added appears and runs; a broken file is refused, old kept."""
    config = _config(tmp_path)
    env = {DATABASE_URL_ENV: database_url}
    with Daemon(config, env=env) as daemon:
        daemon.wait_for("service_started")
        added = {"name": "added", "instance": "amctest2", "workflow_id": "new"}
        document = base_config(jobs=[*JOBS, added], dispatcher=FAST)
        write_config(config, document)
        assert daemon.process is not None
        os.kill(daemon.process.pid, signal.SIGHUP)
        daemon.wait_for("config_reloaded", jobs=3)
        daemon.wait_for("run_succeeded", job="added")
        _, body = daemon.get("/api/jobs")
        assert {j["name"] for j in json.loads(body)["jobs"]} == {
            "weekly",
            "adhoc",
            "added",
        }

        config.write_text(config.read_text() + "\nbroken: [unclosed\n")
        os.kill(daemon.process.pid, signal.SIGHUP)
        refused = daemon.wait_for("config_reload_refused")
        assert "invalid YAML" in refused["errors"][0]
        _, body = daemon.get("/api/jobs")
        assert len(json.loads(body)["jobs"]) == 3
        assert daemon.get("/health")[0] == 200
        assert daemon.stop() == 0


def test_restart_does_not_enqueue_startup_jobs_again(
    tmp_path: Path, database_url: str
) -> None:
    """Unscheduled jobs run once at the first start, never at a later one."""
    config = _config(tmp_path)
    env = {DATABASE_URL_ENV: database_url}
    for start in range(2):
        with Daemon(config, env=env) as daemon:
            daemon.wait_for("service_started")
            if start == 0:
                poll_until(lambda: len(_runs(daemon)) == 2)
                assert len(daemon.find("run_enqueued", source="startup")) == 2
            else:
                assert daemon.find("run_enqueued") == []
                assert len(_runs(daemon)) == 2

            assert daemon.stop() == 0


def test_backfill_enqueues_tumbling_windows(tmp_path: Path, database_url: str) -> None:
    """backfill --step 7d queues consecutive windows, deduplicated on a re-run."""
    config = _config(tmp_path)
    env = {DATABASE_URL_ENV: database_url}
    args = (
        "backfill",
        "--config",
        str(config),
        "weekly",
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-29",
        "--step",
        "7d",
    )
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == "4 windows: 4 queued, 0 already there"
    second = run_cli(*args, env=env)
    assert second.stdout.splitlines()[0] == "4 windows: 0 queued, 4 already there"
    history = run_cli(
        "history", "--config", str(config), "--job", "weekly", "--json", env=env
    )
    windows = sorted(
        json.loads(line)["window"]["start"] for line in history.stdout.splitlines()
    )
    assert windows == [
        "2026-01-01T00:00:00",
        "2026-01-08T00:00:00",
        "2026-01-15T00:00:00",
        "2026-01-22T00:00:00",
    ]
    enqueue = run_cli(
        "enqueue",
        "--config",
        str(config),
        "weekly",
        "--start",
        "2026-01-01",
        "--end",
        "2026-01-08",
        env=env,
    )
    assert enqueue.stdout.startswith("already there: run ")
    cancel = run_cli("cancel", "--config", str(config), "1", env=env)
    assert cancel.stdout.startswith("cancelled run 1 ")
    again = run_cli("cancel", "--config", str(config), "1", env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == "amc-scheduler: run 1 is already cancelled"


def test_schedule_fires_once_across_two_replicas_and_a_restart(
    tmp_path: Path, database_url: str
) -> None:
    """A cron fire seen by two daemons, one restarted, enqueues one run."""
    jobs = [
        {
            "name": "every-minute",
            "instance": "amctest1",
            "workflow_id": "wf",
            "schedule": "* * * * *",
            "time_window": {"last": "1h", "align": "hour"},
        },
    ]
    config = write_config(
        tmp_path / "cron.yaml", base_config(jobs=jobs, dispatcher=FAST)
    )
    env = {DATABASE_URL_ENV: database_url}
    with Daemon(config, env=env) as first, Daemon(config, env=env) as second:
        first.wait_for("service_started")
        second.wait_for("service_started")
        # Whichever replica wins the fire logs it; the other enqueues nothing.
        fired = poll_until(
            lambda: (
                first.find("run_enqueued", source="schedule")
                + second.find("run_enqueued", source="schedule")
            ),
            timeout=75,
        )
        fire_time = fired[0]["fire_time"]
        assert second.stop() == 0
        with Daemon(config, env=env) as restarted:
            restarted.wait_for("service_started")
            runs = [r for r in _runs(first) if r["source"] == "schedule"]
            assert len(runs) == 1
            assert not restarted.find("run_enqueued", fire_time=fire_time)
            assert restarted.stop() == 0

        assert first.stop() == 0

    every = first.find("run_enqueued") + second.find("run_enqueued")
    assert [e for e in every if e.get("fire_time") == fire_time] == fired[:1]
