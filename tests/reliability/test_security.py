"""Security: secrets stay secret, writes need the token, the page escapes, loopback.

Secrets are checked where an operator or an attacker could read them: every
line a daemon printed, every row of every table, and the /health and /metrics
answers.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import make_url, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler.config import DATABASE_URL_ENV, load
from scheduler.jobs import build_run
from scheduler.store.engine import Database, normalise_url
from scheduler.store.models import runs
from scheduler.store.queue import enqueue
from scheduler.windows import explicit
from tests.support.cluster import SIM_CREDENTIALS, Cluster, cluster
from tests.support.daemon import Daemon, base_config, poll_until, request, write_config
from tests.support.postgres import PostgresServer

TOKEN = "test-token-123"
CLUSTER_TOKEN = "cluster-token-1"
# Access tokens the simulator hands out; the daemon must not write them anywhere.
ACCESS_TOKEN_PREFIX = "Atza|"
SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"


# Reading everything back


def dump_tables(database_url: str) -> dict[str, list[str]]:
    """Every row of every table in the public schema, as Postgres prints it."""

    async def go() -> dict[str, list[str]]:
        engine = create_async_engine(normalise_url(database_url))
        try:
            async with engine.connect() as conn:
                names = (
                    await conn.scalars(
                        text(
                            "SELECT tablename FROM pg_tables"
                            " WHERE schemaname = 'public' ORDER BY tablename"
                        )
                    )
                ).all()
                found = {}
                for name in names:
                    rows = await conn.scalars(text(f'SELECT t::text FROM "{name}" t'))
                    found[name] = list(rows.all())

                return found
        finally:
            await engine.dispose()

    return asyncio.run(go())


def leaks(secrets: dict[str, str], where: str, texts: list[str]) -> list[str]:
    """``what in where`` for each secret found in any of ``texts``."""
    return [
        f"{name} in {where}"
        for name, value in secrets.items()
        if any(value in piece for piece in texts)
    ]


def _password_url(
    pg_server: PostgresServer, database_url: str
) -> Iterator[tuple[str, str | None]]:
    """The test database reached as a role with a password, when the server allows."""
    suffix = uuid.uuid4().hex[:10]
    role, password = f"amcs_secret_{suffix}", f"pw-{suffix}-Db"
    try:
        asyncio.run(
            pg_server.execute(
                f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'"
            )
        )
    except Exception:
        # A shared server may refuse CREATE ROLE; the other secrets are still checked.
        yield database_url, None
        return

    url = make_url(database_url).set(username=role, password=password)
    try:
        yield url.render_as_string(hide_password=False), password
    finally:
        asyncio.run(pg_server.execute(f"DROP ROLE IF EXISTS {role}"))


@pytest.fixture
def password_database(
    pg_server: PostgresServer, database_url: str
) -> Iterator[tuple[str, str | None]]:
    """(url, password): a fresh database whose URL carries a password."""
    yield from _password_url(pg_server, database_url)


def _sample(daemon: Daemon, answers: list[str]) -> None:
    for path in ("/health", "/metrics"):
        status, body = daemon.get(path)
        assert status in (200, 503)
        answers.append(body.decode())


def _check_everywhere(
    rig: Cluster, secrets: dict[str, str], answers: list[str], database_url: str
) -> tuple[list[str], int, int]:
    """Leaks in daemon output, table rows and answers; with lines and rows read."""
    lines = [line for daemon in rig.daemons for line in daemon.raw]
    tables = dump_tables(database_url)
    rows = [row for table in tables.values() for row in table]
    found = leaks(secrets, "daemon output", lines)
    found += leaks(secrets, "a table row", rows)
    found += leaks(secrets, "/health or /metrics", answers)
    return found, len(lines), len(rows)


def test_no_secret_reaches_logs_tables_health_or_metrics(
    tmp_path: Path, password_database: tuple[str, str | None]
) -> None:
    """Three SIGKILLs mid-drain: no secret in output, rows, /health or /metrics."""
    url, password = password_database
    secrets = {
        "client secret": SIM_CREDENTIALS["client_secret"],
        "refresh token": SIM_CREDENTIALS["refresh_token"],
        "API token": CLUSTER_TOKEN,
        "access token": ACCESS_TOKEN_PREFIX,
    }
    if password is not None:
        secrets["database password"] = password

    faults = {
        "failure_rate": 0.1,
        "faults": {
            "slow_rate": 0.3,
            "slow_by": "0.3s",
            "server_error_rate": 0.05,
            "throttle_rate": 0.05,
        },
    }
    answers: list[str] = []
    configured = {
        "client_secret": SIM_CREDENTIALS["client_secret"],
        "refresh_token": SIM_CREDENTIALS["refresh_token"],
    }
    with cluster(tmp_path, url, simulator=faults, secrets=configured) as rig:
        rig.enqueue(per_instance=20)
        for kill in range(3):
            daemon = rig.start_daemon()
            daemon.wait_for("service_started")
            _sample(daemon, answers)
            poll_until(
                lambda: rig.states().get("submitting", 0) >= 2,
                timeout=60,
                interval=0.02,
            )
            assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL, f"kill {kill}"

        final = rig.start_daemon()
        final.wait_for("service_started")
        # A write with the token, so the token has crossed the server once.
        status, _ = request(
            "POST",
            final.url("/api/runs"),
            {
                "job": "amcc1-job",
                "window": {"start": "2026-03-01", "end": "2026-03-02"},
            },
            headers={"Authorization": f"Bearer {CLUSTER_TOKEN}"},
        )
        assert status in (200, 201)
        _sample(final, answers)
        rig.wait_all_terminal()
        _sample(final, answers)
        assert final.stop() == 0
        found, lines, rows = _check_everywhere(rig, secrets, answers, url)

    print(
        f"\nsecrets: {sorted(secrets)}; daemon lines {lines}, table rows {rows},"
        f" /health and /metrics answers {len(answers)}"
    )
    assert lines > 100
    assert rows > 100
    assert found == []


def test_wrong_credentials_are_not_echoed(
    tmp_path: Path, password_database: tuple[str, str | None]
) -> None:
    """Credentials AMC refuses are not printed in the failure, rows or answers."""
    url, password = password_database
    wrong = {
        "client_secret": f"wrong-secret-{uuid.uuid4().hex[:8]}",
        "refresh_token": f"Atzr|wrong-refresh-{uuid.uuid4().hex[:8]}",
    }
    secrets = {
        "client secret": wrong["client_secret"],
        "refresh token": wrong["refresh_token"],
        "API token": CLUSTER_TOKEN,
    }
    if password is not None:
        secrets["database password"] = password

    answers: list[str] = []
    with cluster(tmp_path, url, secrets=wrong) as rig:
        rig.enqueue(per_instance=2)
        daemon = rig.start_daemon()
        daemon.wait_for("authentication_failed", timeout=60)
        _sample(daemon, answers)
        assert daemon.stop() == 0
        found, _, _ = _check_everywhere(rig, secrets, answers, url)

    assert found == []


# Writes need the token


def _post(port: int, path: str, authorization: bytes | None) -> tuple[int, Any, Any]:
    """POST with the Authorization header exactly as given (raw bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("POST", path)
        body = json.dumps({"job": "weekly"}).encode()
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        if authorization is not None:
            connection.putheader("Authorization", authorization)

        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


JOBS = [
    {
        "name": "weekly",
        "instance": "amctest1",
        "workflow_id": "wf_weekly",
        "time_window": {"last": "7d"},
        "schedule": "0 6 * * 1",
    }
]
REFUSED_AUTHORIZATIONS: dict[str, bytes | None] = {
    "no header": None,
    "wrong token": b"Bearer wrong-token",
    "empty header": b"",
    "scheme only": b"Bearer",
    "scheme and a space": b"Bearer ",
    "token without scheme": TOKEN.encode(),
    "basic scheme": b"Basic dGVzdC10b2tlbi0xMjM=",
    "other scheme": b"Token " + TOKEN.encode(),
    "token with a suffix": b"Bearer " + TOKEN.encode() + b"x",
    "token prefix": b"Bearer " + TOKEN[:-1].encode(),
    "token twice": b"Bearer " + TOKEN.encode() + b" " + TOKEN.encode(),
    "tab separator": b"Bearer\t" + TOKEN.encode(),
    "latin-1 bytes": b"Bearer t\xebst",
    "not UTF-8": b"Bearer \xff\xfe\xfd",
}


@pytest.fixture
def token_daemon(tmp_path: Path, database_url: str) -> Iterator[Daemon]:
    """A daemon with server.api_token set."""
    document = base_config(jobs=JOBS, logging={"level": "info", "format": "json"})
    config = write_config(tmp_path / "token.yaml", document)
    with Daemon(config, env={DATABASE_URL_ENV: database_url}) as daemon:
        daemon.wait_for("service_started")
        yield daemon
        assert daemon.stop() == 0


def test_writes_without_a_valid_token_get_401(token_daemon: Daemon) -> None:
    """Missing, wrong and malformed Authorization headers: 401 on every write."""
    port = token_daemon.port
    answers = {}
    for name, header in REFUSED_AUTHORIZATIONS.items():
        for path in ("/api/runs", "/api/runs/1/cancel"):
            status, headers, body = _post(port, path, header)
            answers[f"{name} {path}"] = status
            if status == 401:
                assert headers["WWW-Authenticate"] == "Bearer"
                assert set(body) == {"error"}

    assert {key: status for key, status in answers.items() if status != 401} == {}
    # The right token is let through, and reads never needed one.
    assert _post(port, "/api/runs", b"Bearer " + TOKEN.encode())[0] == 201
    assert token_daemon.get("/api/runs")[0] == 200


def test_writes_are_refused_when_no_token_is_configured(
    tmp_path: Path, database_url: str
) -> None:
    """With no server.api_token, every write is 403, whatever the header says."""
    document = base_config(
        jobs=JOBS, server={"port": 0}, logging={"level": "info", "format": "json"}
    )
    config = write_config(tmp_path / "no-token.yaml", document)
    with Daemon(config, env={DATABASE_URL_ENV: database_url}) as daemon:
        daemon.wait_for("service_started")
        for header in (None, b"Bearer " + TOKEN.encode(), b"Bearer ", b"Bearer null"):
            for path in ("/api/runs", "/api/runs/1/cancel"):
                status, _, body = _post(daemon.port, path, header)
                assert (status, set(body)) == (403, {"error"}), (header, path)

        assert daemon.get("/api/runs")[0] == 200
        assert daemon.stop() == 0


# The status page


def test_status_page_escapes_ids_and_messages(
    tmp_path: Path, database_url: str
) -> None:
    """Script in account and instance ids and HTML in a run's reason: only escaped."""
    account, instance = f"ENTITY{SCRIPT}", f"amc{SCRIPT}"
    reason = '<img src=x onerror="alert(2)">'
    message = "<b>bold</b><iframe src='//evil'></iframe>"
    document = base_config(
        accounts=[
            {
                "id": account,
                "marketplace_id": "ATVPDKIKX0DER",
                "instances": [{"id": instance}, {"id": "amcplain"}],
            }
        ],
        jobs=[
            {
                "name": "xss",
                "instance": instance,
                "workflow_id": "wf",
                "schedule": "0 0 1 1 *",
            }
        ],
        logging={"level": "info", "format": "json"},
    )
    config = write_config(tmp_path / "xss.yaml", document)
    settings = load(config).settings
    assert settings.accounts[0].id == account
    assert settings.accounts[0].instances[0].id == instance

    async def insert_failed_run() -> None:
        db = Database(database_url, Path("unused"))
        await db.open()
        try:
            new = build_run(
                settings,
                settings.job("xss"),
                datetime.now(UTC),
                source="test",
                window=explicit(datetime(2026, 1, 1), datetime(2026, 1, 2)),
            )
            (result,) = await enqueue(db, [new])
            async with db.begin() as conn:
                await conn.execute(
                    update(runs)
                    .where(runs.c.id == result.run.id)
                    .values(state="failed", reason=reason, message=message)
                )
        finally:
            await db.close()

    asyncio.run(insert_failed_run())
    with Daemon(config, env={DATABASE_URL_ENV: database_url}) as daemon:
        daemon.wait_for("service_started")
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        connection.request("GET", "/")
        response = connection.getresponse()
        page = response.read().decode()
        headers = response.headers
        connection.close()
        health_type = daemon.get("/health")
        assert daemon.stop() == 0

    assert response.status in (200, 503)
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "<iframe" not in page.lower()
    assert page.count(ESCAPED_SCRIPT) >= 3
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Type"].startswith("text/html")
    assert health_type[0] in (200, 503)


# Loopback by default


def test_server_binds_loopback_by_default(tmp_path: Path, database_url: str) -> None:
    """With no server.host, every socket the daemon listens on is 127.0.0.1."""
    document = base_config(logging={"level": "info", "format": "json"})
    assert "host" not in document["server"]
    config = write_config(tmp_path / "loopback.yaml", document)
    with Daemon(config, env={DATABASE_URL_ENV: database_url}) as daemon:
        started = daemon.wait_for("http_server_started")
        assert daemon.process is not None
        listening = [
            connection.laddr
            for connection in psutil.Process(daemon.process.pid).net_connections(
                kind="inet"
            )
            if connection.status == psutil.CONN_LISTEN
        ]
        assert daemon.stop() == 0

    assert started["host"] == "127.0.0.1"
    assert started["port"] in {address.port for address in listening}
    assert {address.ip for address in listening} == {"127.0.0.1"}
