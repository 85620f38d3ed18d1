"""deploy/compose.yaml: valid against the compose schema, and wired to the package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scheduler.cli import main
from scheduler.config import DATABASE_URL_ENV
from tests.deploy.support import (
    COMPOSE,
    COMPOSE_ENV_EXAMPLE,
    CONTAINER_CONFIG,
    DEPLOY,
    config_variables,
    duration_seconds,
    env_file_values,
    load_with_dummy_secrets,
    stop_bound,
    yaml_document,
)
from tests.deploy.test_dockerfile import CONFIG_PATH


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml_document(COMPOSE)
    return document


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def test_compose_file_matches_the_compose_schema() -> None:
    """check-jsonschema's vendored compose-spec schema accepts the file."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_rejects_an_unknown_key(tmp_path: Path) -> None:
    """The schema check is real: a misspelt service key fails it."""
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  scheduler:\n    image: x\n    port: ['8080']\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "port" in result.stdout


def test_postgres_is_the_official_image_on_a_named_volume() -> None:
    """Postgres keeps its data on a named volume and is checked with pg_isready."""
    postgres = service("postgres")
    assert re.fullmatch(r"postgres:\d+(\.\d+)?", postgres["image"])
    volume, _, target = postgres["volumes"][0].partition(":")
    assert volume in compose()["volumes"]
    assert target == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


@pytest.mark.parametrize("name", ["migrate", "scheduler"])
def test_scheduler_services_wait_for_a_healthy_postgres(name: str) -> None:
    """Both the one-shot migrate and the daemon start once Postgres is healthy."""
    definition = service(name)
    assert definition["depends_on"]["postgres"]["condition"] == "service_healthy"
    build = definition["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )


def test_daemon_starts_after_the_migration() -> None:
    """The daemon waits for `migrate` to succeed; both are real CLI commands."""
    scheduler, migrate = service("scheduler"), service("migrate")
    depends = scheduler["depends_on"]["migrate"]["condition"]
    assert depends == "service_completed_successfully"
    assert migrate["command"] == ["migrate"]
    assert scheduler["command"] == ["run"]
    assert {"migrate", "run"} <= set(main.commands)


def test_health_port_is_published_on_loopback_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every published port binds 127.0.0.1 and reaches the configured port."""
    settings = load_with_dummy_secrets(CONTAINER_CONFIG, monkeypatch)
    for name, definition in compose()["services"].items():
        for port in definition.get("ports", []):
            host, _, rest = str(port).partition(":")
            assert host == "127.0.0.1", (name, port)
            assert rest.rsplit(":", 1)[1] == str(settings.server.port)

    assert service("scheduler")["ports"]


def test_daemon_gets_longer_than_its_shutdown_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop_grace_period leaves the drain its time before compose sends SIGKILL."""
    settings = load_with_dummy_secrets(CONTAINER_CONFIG, monkeypatch)
    grace = duration_seconds(service("scheduler")["stop_grace_period"])
    assert grace >= stop_bound(settings)
    assert service("scheduler")["init"] is True


@pytest.mark.parametrize("name", ["migrate", "scheduler"])
def test_environment_provides_what_the_config_reads(name: str) -> None:
    """Each ${NAME} of the config, and the database URL, come from the environment."""
    definition = service(name)
    environment = definition["environment"]
    wanted = config_variables(CONTAINER_CONFIG.read_text(encoding="utf-8"))
    assert wanted | {DATABASE_URL_ENV} <= set(environment)
    assert environment[DATABASE_URL_ENV].startswith("postgresql://")
    assert "@postgres:5432/" in environment[DATABASE_URL_ENV]

    source, target, mode = definition["volumes"][0].split(":")
    assert (COMPOSE.parent / source).resolve() == CONTAINER_CONFIG
    assert (target, mode) == (CONFIG_PATH, "ro")


def test_secrets_come_from_the_environment_only() -> None:
    """Secret values are ${...} references, each set in compose.env.example."""
    text = COMPOSE.read_text(encoding="utf-8")
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::?[?-][^}]*)?\}", text))
    example = env_file_values(COMPOSE_ENV_EXAMPLE)
    assert referenced <= set(example)
    assert {"POSTGRES_PASSWORD", "AMC_CLIENT_SECRET", "AMC_REFRESH_TOKEN"} <= referenced

    for name in ("AMC_CLIENT_SECRET", "AMC_REFRESH_TOKEN", "AMC_SCHEDULER_API_TOKEN"):
        assert service("scheduler")["environment"][name].startswith("${" + name)

    assert service("postgres")["environment"]["POSTGRES_PASSWORD"].startswith("${")
