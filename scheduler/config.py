"""The config file: YAML in, typed and frozen settings out, or one line per fault.

``${NAME}`` anywhere in a value takes the environment variable ``NAME``
(``$${`` writes a literal ``${``). Relative paths are relative to the
directory of the config file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from .durations import PositiveDuration
from .errors import ConfigError
from .windows import (
    AmcWindowRule,
    TimeZoneName,
    WindowRule,
    resolve,
    resolve_parameters,
    zone,
)

SIMULATOR = "simulator"
DATABASE_URL_ENV = "AMC_SCHEDULER_DATABASE_URL"
DEFAULT_TOKEN_URL = "https://api.amazon.com/auth/o2/token"

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    """``url`` absent: an embedded Postgres under ``data_dir``."""

    url: SecretStr | None = None
    data_dir: Path = Field(
        default_factory=lambda: (
            platformdirs.user_data_path("amc-scheduler") / "postgres"
        )
    )
    pool_size: PositiveInt = 10
    connect_timeout: PositiveDuration = timedelta(seconds=10)
    # Behind PgBouncer in transaction mode (before 1.21, or without
    # max_prepared_statements): no cached, named prepared statements.
    transaction_pooler: bool = False


class FaultSettings(_Section):
    """Seeded faults the simulator injects into its answers."""

    server_error_rate: Fraction = 0.0
    after_create_share: Fraction = 0.5
    throttle_rate: Fraction = 0.0
    malformed_rate: Fraction = 0.0
    slow_rate: Fraction = 0.0
    slow_by: PositiveDuration = timedelta(seconds=2)


class SimulatorSettings(_Section):
    """How the built-in AMC simulator behaves when ``amc.api_url: simulator``."""

    speed: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 60.0
    seed: int = 0
    duration: PositiveDuration = timedelta(minutes=20)
    duration_sigma: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.3
    failure_rate: Fraction = 0.0
    privacy_repeats: PositiveInt = 5
    token_lifetime: PositiveDuration = timedelta(hours=1)
    faults: FaultSettings = FaultSettings()


class AmcSettings(_Section):
    api_url: Identifier
    token_url: Identifier = DEFAULT_TOKEN_URL
    client_id: Identifier | None = None
    client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = None
    requests_per_second: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0
    burst: PositiveInt = 20
    timeout: PositiveDuration = timedelta(seconds=30)
    max_connections: PositiveInt = 32
    simulator: SimulatorSettings = SimulatorSettings()

    @property
    def uses_simulator(self) -> bool:
        return self.api_url == SIMULATOR

    @field_validator("api_url", "token_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != SIMULATOR and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"expected an http(s) URL or {SIMULATOR!r}, got {value!r}")

        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials(self) -> AmcSettings:
        if self.uses_simulator:
            return self

        missing = [
            key
            for key in ("client_id", "client_secret", "refresh_token")
            if getattr(self, key) is None
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} required when api_url is not {SIMULATOR!r}"
            )

        return self


class InstanceSettings(_Section):
    id: Identifier
    max_parallel: PositiveInt = 10


class AccountSettings(_Section):
    id: Identifier
    marketplace_id: Identifier
    max_parallel: PositiveInt = 200
    instances: list[InstanceSettings] = Field(min_length=1)


class JobSettings(_Section):
    name: Name
    instance: Identifier
    workflow_id: Identifier | None = None
    sql: str | None = None
    time_window: WindowRule = AmcWindowRule(type="MOST_RECENT_DAY")
    parameters: dict[str, Any] = Field(default_factory=dict)
    schedule: str | None = None
    time_zone: TimeZoneName = "UTC"
    max_attempts: PositiveInt = 3
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    timeout: PositiveDuration | None = None
    expected_duration: PositiveDuration | None = None
    ignore_data_gaps: bool | None = None
    dry_run: bool | None = None
    skip_publish: bool | None = None
    output_format: dict[str, Any] | None = None
    request_fields: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sql")
    @classmethod
    def _sql_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")

        return value

    @model_validator(mode="before")
    @classmethod
    def _one_workflow(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [key for key in ("workflow_id", "sql") if data.get(key) is not None]
            if len(given) != 1:
                raise ValueError("set exactly one of workflow_id and sql")

        return data


class DispatcherSettings(_Section):
    poll_min: PositiveDuration = timedelta(seconds=15)
    poll_max: PositiveDuration = timedelta(minutes=5)
    # Slot-seconds a poll may let sit idle while runs wait: fewer requests
    # against slots refilled sooner (see scheduler/polling.py).
    poll_waste: PositiveDuration = timedelta(seconds=30)
    admit_interval: PositiveDuration = timedelta(seconds=5)
    lease: PositiveDuration = timedelta(minutes=2)
    submit_concurrency: PositiveInt = 16
    retry_base: PositiveDuration = timedelta(seconds=30)
    retry_max: PositiveDuration = timedelta(minutes=30)
    aging: PositiveDuration = timedelta(hours=1)
    expected_duration: PositiveDuration = timedelta(minutes=20)
    lookback: PositiveDuration = timedelta(hours=24)
    shutdown_timeout: PositiveDuration = timedelta(seconds=20)
    stall_after: PositiveDuration = timedelta(minutes=2)
    lost_after: PositiveDuration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _bounds(self) -> DispatcherSettings:
        if self.poll_min > self.poll_max:
            raise ValueError("poll_min must not exceed poll_max")

        if self.retry_base > self.retry_max:
            raise ValueError("retry_base must not exceed retry_max")

        return self


class ResultsSettings(_Section):
    dir: Path | None = None
    wait: PositiveDuration = timedelta(hours=1)


class SchedulesSettings(_Section):
    catch_up: Literal["coalesce", "all", "skip"] = "coalesce"
    max_catch_up: PositiveInt = 100


class ServerSettings(_Section):
    host: Identifier = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    api_token: SecretStr | None = None
    status_refresh: PositiveDuration = timedelta(seconds=5)


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    amc: AmcSettings
    accounts: list[AccountSettings] = Field(min_length=1)
    jobs: list[JobSettings] = Field(default_factory=list)
    dispatcher: DispatcherSettings = DispatcherSettings()
    results: ResultsSettings = ResultsSettings()
    schedules: SchedulesSettings = SchedulesSettings()
    server: ServerSettings = ServerSettings()
    logging: LoggingSettings = LoggingSettings()

    def instances(self) -> Iterator[tuple[AccountSettings, InstanceSettings]]:
        for account in self.accounts:
            for instance in account.instances:
                yield account, instance

    def account_of(self, instance_id: str) -> AccountSettings:
        for account, instance in self.instances():
            if instance.id == instance_id:
                return account

        raise KeyError(instance_id)

    def job(self, name: str) -> JobSettings:
        for job in self.jobs:
            if job.name == name:
                return job

        raise KeyError(name)

    def secrets(self) -> list[str]:
        """Every secret value, for the log redactor."""
        values = [
            self.amc.client_secret,
            self.amc.refresh_token,
            self.server.api_token,
            self.database.url,
        ]
        found = [value.get_secret_value() for value in values if value is not None]
        if self.database.url is not None:
            found.extend(_url_passwords(self.database.url.get_secret_value()))

        return [value for value in found if len(value) >= 4]


def _url_passwords(url: str) -> list[str]:
    match = re.match(r"^[a-z0-9+]+://[^:/@]*:([^@/]+)@", url)
    return [match.group(1)] if match else []


@dataclass(frozen=True)
class LoadedConfig:
    """Settings with the file they came from."""

    settings: Settings
    path: Path

    @property
    def name(self) -> str:
        return str(self.path)


# Reading the file


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with the same key twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, list | dict | set):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )

        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark,
            )

        seen[key] = key_node.start_mark.line

    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)

_VARIABLE = re.compile(r"\$(\$)?\{([^}]*)\}")


def format_path(loc: tuple[int | str, ...]) -> str:
    """``('jobs', 2, 'instance')`` → ``jobs[2].instance``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            text += f"[{str(part)!r}]"
        else:
            text += f".{part}" if text else str(part)

    return text or "(top level)"


def _interpolate(value: Any, loc: tuple[int | str, ...], problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {
            key: _interpolate(item, (*loc, key), problems)
            for key, item in value.items()
        }

    if isinstance(value, list):
        return [
            _interpolate(item, (*loc, index), problems)
            for index, item in enumerate(value)
        ]

    if isinstance(value, str) and "\x00" in value:
        problems.append(f"{format_path(loc)}: NUL characters are not allowed")
        return value

    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "${" + match.group(2) + "}"

        name = match.group(2)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            problems.append(f"{format_path(loc)}: invalid variable name {name!r}")
            return ""

        if name not in os.environ:
            problems.append(
                f"{format_path(loc)}: environment variable {name} is not set"
            )
            return ""

        return os.environ[name]

    return _VARIABLE.sub(replace, value)


_UNION_TAGS = {"amc", "explicit", "relative"}


def _error_line(error: Any) -> str:
    loc = tuple(
        part
        for index, part in enumerate(error["loc"])
        if not (
            part in _UNION_TAGS
            and index > 0
            and error["loc"][index - 1] == "time_window"
        )
    )
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "missing required key"
    else:
        message = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)

        message = message[:1].lower() + message[1:]

    return f"{format_path(loc)}: {message}"


def _cross_check(settings: Settings) -> list[str]:
    """Faults that involve more than one key."""
    from apscheduler.triggers.cron import CronTrigger

    problems: list[str] = []
    now = datetime.now(UTC)
    account_ids: set[str] = set()
    instance_ids: dict[str, str] = {}
    for a, account in enumerate(settings.accounts):
        if account.id in account_ids:
            problems.append(f"accounts[{a}].id: duplicate account id {account.id!r}")

        account_ids.add(account.id)
        for i, instance in enumerate(account.instances):
            where = f"accounts[{a}].instances[{i}]"
            if instance.id in instance_ids:
                problems.append(
                    f"{where}.id: duplicate instance id {instance.id!r}"
                    f" (also in account {instance_ids[instance.id]!r})"
                )

            instance_ids[instance.id] = account.id
            if instance.max_parallel > account.max_parallel:
                problems.append(
                    f"{where}.max_parallel: {instance.max_parallel} is above its"
                    f" account's max_parallel {account.max_parallel}"
                )

    names: set[str] = set()
    known = ", ".join(sorted(instance_ids))
    for j, job in enumerate(settings.jobs):
        if job.name in names:
            problems.append(f"jobs[{j}].name: duplicate job name {job.name!r}")

        names.add(job.name)
        if job.instance not in instance_ids:
            problems.append(
                f"jobs[{j}].instance: unknown instance {job.instance!r}"
                f" (known: {known})"
            )

        if job.schedule is not None:
            try:
                trigger = CronTrigger.from_crontab(
                    job.schedule, timezone=zone(job.time_zone)
                )
            except ValueError as exc:
                problems.append(
                    f"jobs[{j}].schedule: invalid cron expression"
                    f" {job.schedule!r}: {exc}"
                )
            else:
                if trigger.get_next_fire_time(None, now) is None:
                    problems.append(f"jobs[{j}].schedule: {job.schedule!r} never fires")

        try:
            resolve(job.time_window, now)
        except (ValueError, OverflowError) as exc:
            problems.append(f"jobs[{j}].time_window: {exc}")

        try:
            resolve_parameters(job.parameters, now, job.time_zone)
        except (ValueError, OverflowError) as exc:
            problems.append(f"jobs[{j}].parameters: {exc}")

    return problems


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def absolute(path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    database = settings.database.model_copy(
        update={"data_dir": absolute(settings.database.data_dir)}
    )
    results = settings.results
    if results.dir is not None:
        results = results.model_copy(update={"dir": absolute(results.dir)})

    return settings.model_copy(update={"database": database, "results": results})


def parse(document: Any, name: str, base: Path | None = None) -> Settings:
    """Validate an already-read YAML document; ``name`` labels the errors."""
    if not isinstance(document, dict):
        raise ConfigError([f"{name}: expected a mapping of settings at the top level"])

    problems: list[str] = []
    try:
        document = _interpolate(document, (), problems)
        if problems:
            raise ConfigError([f"{name}: {problem}" for problem in problems])

        settings = Settings.model_validate(document)
    except ValidationError as exc:
        raise ConfigError([f"{name}: {_error_line(e)}" for e in exc.errors()]) from None
    except RecursionError:
        raise ConfigError(
            [f"{name}: nested too deeply (or an alias refers to itself)"]
        ) from None

    problems = _cross_check(settings)
    if problems:
        raise ConfigError([f"{name}: {problem}" for problem in problems])

    try:
        return _resolve_paths(settings, base or Path.cwd())
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{name}: invalid path: {exc}"]) from None


def load(path: str | Path) -> LoadedConfig:
    """Read, interpolate and validate the config file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: is not UTF-8 text"]) from None

    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(exc.problem).split())
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        # Reader errors (a character YAML forbids) carry no mark, only text.
        problem = " ".join(str(exc).split())
        raise ConfigError([f"{path}: invalid YAML: {problem}"]) from None

    settings = parse(document, str(path), base=path.resolve().parent)
    return LoadedConfig(settings=settings, path=path)


def database_url(settings: Settings) -> str | None:
    """The database URL to use: the environment wins over the file."""
    from_env = os.environ.get(DATABASE_URL_ENV)
    if from_env:
        return from_env

    if settings.database.url is not None:
        return settings.database.url.get_secret_value()

    return None


def next_fire_times(
    job: JobSettings, after: datetime, count: int = 1
) -> list[datetime]:
    """The next ``count`` fire times of a scheduled job after ``after``."""
    from apscheduler.triggers.cron import CronTrigger

    if job.schedule is None:
        return []

    trigger = CronTrigger.from_crontab(job.schedule, timezone=zone(job.time_zone))
    times: list[datetime] = []
    previous: datetime | None = None
    moment = after
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None:
            break

        times.append(fire)
        previous = fire
        moment = fire

    return times
