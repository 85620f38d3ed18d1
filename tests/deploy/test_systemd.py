"""deploy/systemd/: the unit verifies, is sandboxed, and runs the real daemon."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from scheduler.cli import main
from scheduler.config import DATABASE_URL_ENV
from tests.deploy.support import (
    SYSTEMD_CONFIG,
    SYSTEMD_ENV_EXAMPLE,
    SYSTEMD_UNIT,
    config_variables,
    console_script,
    duration_seconds,
    env_file_names,
    load_with_dummy_secrets,
    stop_bound,
    tool,
)

# Keys this unit may use, for the check where systemd-analyze is absent.
KNOWN_KEYS = {
    "Unit": {
        "Description",
        "Documentation",
        "After",
        "Wants",
        "Requires",
        "StartLimitIntervalSec",
        "StartLimitBurst",
    },
    "Service": {
        "Type",
        "User",
        "Group",
        "ExecStart",
        "ExecReload",
        "EnvironmentFile",
        "Environment",
        "Restart",
        "RestartSec",
        "KillMode",
        "KillSignal",
        "TimeoutStopSec",
        "StateDirectory",
        "StateDirectoryMode",
        "WorkingDirectory",
        "UMask",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ReadWritePaths",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "SystemCallErrorNumber",
        "RemoveIPC",
    },
    "Install": {"WantedBy"},
}
# systemd-analyze security: 0 is fully locked down, 10 is no sandbox at all.
MAX_EXPOSURE = 2.0


def unit() -> dict[str, dict[str, list[str]]]:
    """Sections of the unit file, each key with every value it is given."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(SYSTEMD_UNIT.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue

        assert not line.endswith("\\"), f"line {number}: keep settings on one line"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue

        key, sep, value = line.partition("=")
        assert sep, f"line {number}: not KEY=VALUE: {raw!r}"
        assert current is not None, f"line {number}: a setting before any [Section]"
        current.setdefault(key.strip(), []).append(value.strip())

    return sections


def setting(section: str, key: str) -> str:
    values = unit()[section][key]
    assert len(values) == 1, f"{key} is set {len(values)} times"
    return values[0]


def runnable_copy(directory: Path) -> Path:
    """The unit with ExecStart pointing at this environment's console script.

    systemd-analyze verify insists that the executable exists; the unit names
    where the install steps put it, /opt/amc-scheduler/bin.
    """
    text = SYSTEMD_UNIT.read_text()
    path = shlex.split(setting("Service", "ExecStart"))[0]
    copy = directory / SYSTEMD_UNIT.name
    copy.write_text(text.replace(path, tool(console_script())))
    return copy


def test_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify is silent; without it, every key is a known one."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        for section, keys in unit().items():
            assert set(keys) <= KNOWN_KEYS[section], section

        return

    result = subprocess.run(
        [analyze, "verify", "--man=no", str(runnable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    about_unit = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if SYSTEMD_UNIT.name in line
    ]
    assert result.returncode == 0, result.stderr
    assert about_unit == []


def test_unit_is_sandboxed(tmp_path: Path) -> None:
    """The sandbox keys are set; systemd-analyze security rates it, if present."""
    service = unit()["Service"]
    assert setting("Service", "NoNewPrivileges") == "yes"
    assert setting("Service", "ProtectSystem") == "strict"
    assert setting("Service", "ProtectHome") == "yes"
    assert setting("Service", "PrivateTmp") == "yes"
    assert setting("Service", "User") not in {"root", "0"}
    assert setting("Service", "StateDirectory") == "amc-scheduler"
    state = "/var/lib/" + setting("Service", "StateDirectory")
    assert service["ReadWritePaths"] == [state]
    assert setting("Service", "WorkingDirectory") == state

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return

    result = subprocess.run(
        [
            analyze,
            "security",
            "--offline=yes",
            "--no-pager",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            str(runnable_copy(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_unit_restarts_reloads_and_stops_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Restart on failure, SIGHUP on reload, and a stop bound above the drain."""
    settings = load_with_dummy_secrets(SYSTEMD_CONFIG, monkeypatch)
    assert setting("Service", "Restart") == "on-failure"
    assert shlex.split(setting("Service", "ExecReload"))[1:] == ["-HUP", "$MAINPID"]
    assert setting("Service", "KillMode") == "mixed"
    assert setting("Service", "KillSignal") == "SIGTERM"
    stop = duration_seconds(setting("Service", "TimeoutStopSec"))
    assert stop >= stop_bound(settings)


def test_unit_runs_the_daemon_with_the_installed_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ExecStart is `amc-scheduler run --config FILE`; the config validates."""
    program, *args = shlex.split(setting("Service", "ExecStart"))
    assert Path(program).name == console_script()
    assert args[0] in main.commands
    options = {opt for param in main.commands[args[0]].params for opt in param.opts}
    assert args[1] in options
    assert args == ["run", "--config", "/etc/amc-scheduler/config.yaml"]

    settings = load_with_dummy_secrets(SYSTEMD_CONFIG, monkeypatch)
    state = Path("/var/lib") / setting("Service", "StateDirectory")
    assert settings.database.data_dir.is_relative_to(state)
    assert settings.server.host == "127.0.0.1"


def test_env_example_names_every_secret_the_config_reads() -> None:
    """The EnvironmentFile example sets each ${NAME} and shows the database URL."""
    wanted = config_variables(SYSTEMD_CONFIG.read_text())
    names = env_file_names(SYSTEMD_ENV_EXAMPLE)
    assert wanted <= names
    assert DATABASE_URL_ENV in names
    assert setting("Service", "EnvironmentFile") == (
        "/etc/amc-scheduler/amc-scheduler.env"
    )
