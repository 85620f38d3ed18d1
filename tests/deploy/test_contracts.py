"""The names the deployment files and docs/deploy.md use exist in the package."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.core import Metric

from scheduler.cli import CONFIG_ENV, main
from scheduler.config import DATABASE_URL_ENV
from scheduler.metrics import PREFIX, Metrics
from scheduler.web import create_app
from tests.deploy.support import (
    COMPOSE,
    CONTAINER_CONFIG,
    DEPLOY,
    DEPLOY_DOC,
    DOCKERFILE,
    SYSTEMD_CONFIG,
    SYSTEMD_UNIT,
    load_with_dummy_secrets,
)

_SUFFIXES = {
    "counter": ["_total", "_created"],
    "histogram": ["_bucket", "_sum", "_count", "_created"],
    "gauge": [],
}


def served() -> tuple[set[str], set[str]]:
    """The app's GET paths, and every metric series name ``/metrics`` can serve."""
    metrics = Metrics()
    context: Any = SimpleNamespace(metrics=metrics)
    app = create_app(context)
    paths = {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    }
    names = set()
    families: list[Metric] = list(metrics.registry.collect())
    for family in families:
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])

    return paths, names


def doc_code() -> list[str]:
    """Fenced blocks and inline code spans of docs/deploy.md."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```[\w-]*\n(.*?)^```", text, flags=re.M | re.S)
    prose = re.sub(r"^```[\w-]*\n.*?^```", "", text, flags=re.M | re.S)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


@pytest.mark.parametrize(
    "path", [CONTAINER_CONFIG, SYSTEMD_CONFIG], ids=lambda path: path.name
)
def test_shipped_configs_validate(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each config in deploy/ passes the daemon's own validation."""
    settings = load_with_dummy_secrets(path, monkeypatch)
    assert settings.database.url is None
    assert settings.database.data_dir == Path("/var/lib/amc-scheduler/postgres")
    assert settings.server.api_token is not None
    assert not settings.amc.uses_simulator


def test_container_config_listens_on_every_interface(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """server.host is 0.0.0.0 in the container config, unlike the default."""
    settings = load_with_dummy_secrets(CONTAINER_CONFIG, monkeypatch)
    assert settings.server.host == "0.0.0.0"
    assert settings.logging.format == "json"


def test_probe_and_scrape_paths_are_served() -> None:
    """/health and /metrics, which the probes and the docs use, are routes."""
    paths, _ = served()
    assert {"/health", "/metrics"} <= paths


def test_environment_names_are_the_packages() -> None:
    """The env var names the files set are the ones the package reads."""
    assert DATABASE_URL_ENV == "AMC_SCHEDULER_DATABASE_URL"
    assert CONFIG_ENV == "AMC_SCHEDULER_CONFIG"
    assert CONFIG_ENV in DOCKERFILE.read_text(encoding="utf-8")
    for path in (COMPOSE, DEPLOY / "kubernetes" / "deployment.yaml"):
        assert DATABASE_URL_ENV in path.read_text(encoding="utf-8")

    assert DATABASE_URL_ENV in SYSTEMD_UNIT.read_text(encoding="utf-8")


def test_docs_name_only_metrics_the_service_serves() -> None:
    """Every amc_scheduler_* series in docs/deploy.md exists, the key ones appear."""
    _, names = served()
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    mentioned = set(re.findall(rf"(?<![/\w]){PREFIX}_\w+", text))
    assert mentioned <= names, sorted(mentioned - names)
    required = {
        "amc_scheduler_healthy",
        "amc_scheduler_runs",
        "amc_scheduler_slots_in_use",
        "amc_scheduler_slot_limit",
        "amc_scheduler_limit_errors_total",
        "amc_scheduler_loop_failures_total",
        "amc_scheduler_runs_finished_total",
        "amc_scheduler_queue_wait_seconds",
    }
    assert required <= mentioned


def test_docs_run_only_real_commands() -> None:
    """Every `amc-scheduler COMMAND` in the guide's code is a CLI subcommand."""
    # The program, not the namespace (-n amc-scheduler) or a user name.
    command = re.compile(
        r"(?:^|(?<=[\s/]))(?<!-n )(?<!--namespace )amc-scheduler ([a-z][a-z-]*)(?=\s|$)"
    )
    used = set()
    for code in doc_code():
        for line in code.splitlines():
            used.update(command.findall(line))

    assert used, "the guide shows no command"
    assert used <= set(main.commands), sorted(used - set(main.commands))
    assert {"run", "migrate", "status", "check-config"} <= used


def test_docs_mention_every_deployment_file() -> None:
    """docs/deploy.md points at each file in deploy/ and at .dockerignore."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    for path in files:
        relative = path.relative_to(DEPLOY.parent).as_posix()
        assert relative in text or path.name in text, relative

    assert ".dockerignore" in text
