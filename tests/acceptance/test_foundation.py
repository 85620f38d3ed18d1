from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler.config import DATABASE_URL_ENV
from scheduler.store.engine import normalise_url
from scheduler.store.migrate import head_revision
from tests.support.daemon import Daemon, base_config, poll_until, run_cli, write_config

HEALTH_KEYS = {"status", "database", "queue", "instances"}
STATES = {
    "queued",
    "submitting",
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_daemon_serves_health_and_stops_cleanly(
    tmp_path: Path, database_url: str, signum: int
) -> None:
    """`run` migrates, answers /health with the DESIGN keys, and exits 0 on a signal."""
    config = write_config(tmp_path / "c.yaml", base_config())
    with Daemon(config, env={DATABASE_URL_ENV: database_url}) as daemon:
        daemon.wait_for("service_started")
        status, health = poll_until(lambda: daemon.get_json("/health"))
        assert status == 200
        assert set(health) >= HEALTH_KEYS
        assert health["status"] == "ok"
        assert set(health["queue"]) == STATES
        assert {i["id"] for i in health["instances"]} == {"amctest1", "amctest2"}
        for instance in health["instances"]:
            assert {"id", "account", "in_flight", "limit"} <= set(instance)
            assert instance["limit"] == 10
            assert instance["account"] == "ENTITYTEST1"

        assert daemon.stop(signum) == 0

    daemon.wait_for("service_stopped")


def test_daemon_on_the_embedded_database(tmp_path: Path) -> None:
    """With no database URL anywhere, the daemon runs its own Postgres."""
    document = base_config(database={"data_dir": str(tmp_path / "pg")})
    config = write_config(tmp_path / "c.yaml", document)
    env = {DATABASE_URL_ENV: ""}
    with Daemon(config, env=env) as daemon:
        daemon.wait_for("service_started", embedded_database=True)
        status, health = daemon.get_json("/health")
        assert status == 200
        assert health["database"]["embedded"] is True
        assert daemon.stop() == 0

    daemon.wait_for("embedded_database_stopped")


def test_broken_config_exits_1_with_one_line(tmp_path: Path) -> None:
    """`run` and `check-config` on a bad file: one line per fault, no traceback."""
    document = base_config(jobs=[{"name": "x", "instance": "amc9", "workflow_id": "w"}])
    config = write_config(tmp_path / "bad.yaml", document)
    for args in (("run", "--config", str(config)), ("check-config", str(config))):
        result = run_cli(*args)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"{config}: jobs[0].instance: unknown instance 'amc9'"
            " (known: amctest1, amctest2)"
        )
        assert "Traceback" not in result.stderr + result.stdout


def test_check_config_summarises_a_good_file(tmp_path: Path) -> None:
    """check-config lists accounts, instances with limits and jobs with next fires."""
    document = base_config(
        jobs=[
            {
                "name": "hourly",
                "instance": "amctest1",
                "workflow_id": "w",
                "schedule": "0 * * * *",
            },
            {"name": "once", "instance": "amctest2", "sql": "select 1"},
        ]
    )
    config = write_config(tmp_path / "good.yaml", document)
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ENTITYTEST1 (ATVPDKIKX0DER): max_parallel 15" in out
    assert "amctest1: max_parallel 10" in out
    assert "hourly: amctest1, w, cron '0 * * * *' UTC, next " in out
    assert "once: amctest2, ad hoc SQL, once at start-up" in out


def test_missing_config_file(tmp_path: Path) -> None:
    """A config path that does not exist is one clear line."""
    result = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: no such file"


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    """`migrate` against a database that is not there fails with one line."""
    config = write_config(tmp_path / "c.yaml", base_config())
    env = {DATABASE_URL_ENV: "postgresql://postgres@127.0.0.1:1/none"}
    result = run_cli("migrate", "--config", str(config), env=env)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("amc-scheduler: database unreachable")


async def test_migrate_creates_the_tables(
    tmp_path: Path, empty_database_url: str
) -> None:
    """`migrate` brings an empty database to head; a second run applies nothing."""
    config = write_config(tmp_path / "c.yaml", base_config())
    env = {DATABASE_URL_ENV: empty_database_url}
    first = run_cli("migrate", "--config", str(config), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied 0001")
    second = run_cli("migrate", "--config", str(config), env=env)
    assert second.stdout.strip() == f"schema is current at {head_revision()}"

    engine = create_async_engine(normalise_url(empty_database_url))
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()

    assert {"runs", "attempts", "events"} <= tables


def _as_ordinary_user() -> list[str]:
    """A command prefix that runs as `nobody` when we are root and it can."""
    import os
    import shutil
    import subprocess
    import sys

    runuser = shutil.which("runuser")
    if os.geteuid() != 0 or runuser is None:
        return []

    probe = subprocess.run(
        [runuser, "-u", "nobody", "--", sys.executable, "-c", "import scheduler"],
        capture_output=True,
    )
    return [runuser, "-u", "nobody", "--"] if probe.returncode == 0 else []


def test_embedded_database_works_for_an_ordinary_user() -> None:
    """migrate on the embedded database as `nobody` (as root), else as ourselves."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    prefix = _as_ordinary_user()
    work = Path(tempfile.mkdtemp(prefix="amcs-user-"))
    try:
        work.chmod(0o777)
        config = write_config(
            work / "c.yaml", base_config(database={"data_dir": str(work / "pg")})
        )
        config.chmod(0o644)
        env = {**os.environ, DATABASE_URL_ENV: "", "HOME": str(work)}
        result = subprocess.run(
            [
                *prefix,
                sys.executable,
                "-m",
                "scheduler",
                "migrate",
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("applied 0001")
        assert "Traceback" not in result.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
