"""What the deployment tests share: paths, file readers and the package's facts."""

from __future__ import annotations

import re
import shutil
import sys
import sysconfig
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.config import DispatcherSettings, Settings, load

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_ENV_EXAMPLE = DEPLOY / "compose.env.example"
CONTAINER_CONFIG = DEPLOY / "config.container.yaml"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD_UNIT = DEPLOY / "systemd" / "amc-scheduler.service"
SYSTEMD_ENV_EXAMPLE = DEPLOY / "systemd" / "amc-scheduler.env.example"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "config.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

# After shutdown_timeout the dispatcher cancels what is left and waits up to
# this long more (Dispatcher._drain); then pools, leases and the embedded
# database close. A platform's stop bound must leave room for all of it.
LATE_CANCEL_WAIT = 5.0
CLOSE_MARGIN = 10.0

_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def console_script() -> str:
    """The name of the console script that runs ``scheduler.cli:main``."""
    scripts = pyproject()["project"]["scripts"]
    names = [name for name, target in scripts.items() if target == "scheduler.cli:main"]
    assert len(names) == 1, scripts
    return str(names[0])


def tool(name: str) -> str:
    """A command installed by the test extra: beside this Python, else on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / name]
    candidates.append(Path(sys.executable).parent / name)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)

    found = shutil.which(name)
    assert found is not None, f"{name} is missing: pip install -e '.[test]'"
    return found


def yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def yaml_document(path: Path) -> Any:
    documents = yaml_documents(path)
    assert len(documents) == 1, f"{path}: expected one YAML document"
    return documents[0]


def config_variables(text: str) -> set[str]:
    """The environment variables a config file reads as ``${NAME}`` (not comments)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.update(_VARIABLE.findall(value))

    walk(yaml.safe_load(text))
    return found


def env_file_names(path: Path) -> set[str]:
    """The names an env file sets, commented-out ones included."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?([A-Z][A-Z0-9_]*)=", line.strip())
        if match:
            names.add(match.group(1))

    return names


def env_file_values(path: Path) -> dict[str, str]:
    """The names an env file sets (not the commented-out ones) with their values."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            values[match.group(1)] = match.group(2)

    return values


def load_with_dummy_secrets(path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Validate a config file the way the daemon does, with placeholder secrets."""
    for name in config_variables(path.read_text(encoding="utf-8")):
        monkeypatch.setenv(name, f"dummy-{name.lower()}")

    return load(path).settings


def duration_seconds(value: str | int | float) -> float:
    """``45s``, ``1m30s``, ``60`` (seconds), as compose, systemd and YAML write them."""
    from scheduler.durations import parse_duration

    if isinstance(value, int | float):
        return float(value)

    delta: timedelta = parse_duration(value.strip().replace("min", "m"))
    return delta.total_seconds()


def stop_bound(*configs: Settings) -> float:
    """The least time a platform must give a SIGTERMed daemon before SIGKILL."""
    timeouts = [DispatcherSettings().shutdown_timeout.total_seconds()]
    timeouts += [c.dispatcher.shutdown_timeout.total_seconds() for c in configs]
    return max(timeouts) + LATE_CANCEL_WAIT + CLOSE_MARGIN


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue

        if pending and line.startswith("#"):
            continue

        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue

        pending += line
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""

    assert not pending, f"{path}: a continuation line ends the file"
    return instructions
