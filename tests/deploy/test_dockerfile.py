"""deploy/Dockerfile and .dockerignore: linted, and consistent with the package."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from scheduler.cli import CONFIG_ENV, main
from tests.deploy.support import (
    CONTAINER_CONFIG,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    console_script,
    dockerfile_instructions,
    load_with_dummy_secrets,
    pyproject,
    tool,
)

CONFIG_PATH = "/etc/amc-scheduler/config.yaml"


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            found.append([])

        if found:
            found[-1].append((keyword, args))

    return found


def only(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [args for key, args in stage if key == keyword]
    assert len(values) == 1, f"expected one {keyword}, found {values}"
    return values[0]


def env_values(stage: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for key, args in stage:
        if key == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                values[name] = value

    return values


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for key, args in dockerfile_instructions():
        if key == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value

    return defaults


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex."""
    parts = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
            continue

        if pattern.startswith("**", index):
            parts.append(".*")
            index += 2
            continue

        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[":
            end = pattern.index("]", index)
            parts.append(pattern[index : end + 1])
            index = end
        else:
            parts.append(re.escape(char))

        index += 1

    return re.compile("".join(parts) + "$")


def ignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (the last match decides)."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((negated, _pattern_regex(pattern)))

    segments = path.split("/")
    candidates = ["/".join(segments[: n + 1]) for n in range(len(segments))]
    result = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            result = not negated

    return result


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    """hadolint reports nothing at all, not even style notes."""
    result = subprocess.run(
        [
            tool("hadolint"),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The hadolint run above is a real check: an unpinned base image fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3013"} <= codes
    assert result.returncode != 0


def test_image_builds_a_wheel_then_installs_it_on_slim_python() -> None:
    """Two stages on a slim Python 3.11 base: pip wheel, then only that wheel."""
    build, runtime = stages()
    base = arg_defaults()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    assert pyproject()["project"]["requires-python"] == ">=3.11"

    wheel = [args for key, args in build if key == "RUN" and "pip wheel" in args]
    assert wheel == ["pip wheel --wheel-dir /wheels ."]

    installs = [args for key, args in runtime if key == "RUN" and "pip install" in args]
    assert len(installs) == 1
    distribution = pyproject()["project"]["name"].replace("-", "_")
    assert "--mount=type=bind,from=build,source=/wheels" in installs[0]
    assert "--no-index --find-links=/wheels" in installs[0]
    assert installs[0].endswith(f"/wheels/{distribution}-*.whl")


def test_build_context_holds_what_the_wheel_needs() -> None:
    """Every COPY source exists, the wheel's inputs survive .dockerignore."""
    build = stages()[0]
    sources = []
    for key, args in build:
        if key == "COPY":
            *names, _ = args.split()
            sources += [name.rstrip("/") for name in names]

    project = pyproject()
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}
    needed |= set(project["tool"]["setuptools"]["package-dir"].values())
    assert needed <= set(sources)

    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        assert files, source
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not ignored(relative), relative


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".env",
        "deploy/.env",
        ".demo/postgres/PG_VERSION",
        "tests/unit/test_config.py",
        "benchmarks/run.py",
        "scheduler/__pycache__/cli.cpython-311.pyc",
        ".venv/bin/python",
    ],
)
def test_build_context_leaves_out_secrets_and_clutter(path: str) -> None:
    """.dockerignore keeps history, env files, state and tests out of the context."""
    assert ignored(path)


def test_image_runs_the_daemon_as_a_non_root_user() -> None:
    """USER is a numeric non-root id; the entry point is the CLI's ``run``."""
    runtime = stages()[1]
    user = only(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert int(uid) > 0
    assert int(gid or uid) > 0

    assert json.loads(only(runtime, "ENTRYPOINT")) == [console_script()]
    command = json.loads(only(runtime, "CMD"))
    assert command == ["run"]
    assert command[0] in main.commands


def test_image_reads_its_config_from_the_documented_path() -> None:
    """AMC_SCHEDULER_CONFIG names the path where compose and Kubernetes mount it."""
    env = env_values(stages()[1])
    assert env[CONFIG_ENV] == CONFIG_PATH
    assert env["HOME"] == "/var/lib/amc-scheduler"
    assert "/var/lib/amc-scheduler" in only(stages()[1], "VOLUME")


def test_healthcheck_probes_health_on_the_configured_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HEALTHCHECK gets /health with urllib on the port the container config sets."""
    runtime = stages()[1]
    check = only(runtime, "HEALTHCHECK")
    assert "curl" not in check
    assert "urllib.request" in check

    url = re.search(r"http://([\d.]+):(\d+)(/[\w/]*)", check)
    assert url is not None, check
    host, port, path = url.groups()
    settings = load_with_dummy_secrets(CONTAINER_CONFIG, monkeypatch)
    assert host == "127.0.0.1"
    assert int(port) == settings.server.port
    assert only(runtime, "EXPOSE") == port
    assert path == "/health"
    assert settings.server.host == "0.0.0.0"
