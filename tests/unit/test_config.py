from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.config import (
    DATABASE_URL_ENV,
    ConfigError,
    database_url,
    load,
    parse,
)
from scheduler.windows import ExplicitWindowRule, RelativeWindowRule

REPO = Path(__file__).resolve().parents[2]


def base(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "amc": {"api_url": "simulator"},
        "accounts": [
            {
                "id": "ENTITY1",
                "marketplace_id": "ATVPDKIKX0DER",
                "instances": [{"id": "amc1"}, {"id": "amc2"}],
            }
        ],
        "jobs": [{"name": "daily", "instance": "amc1", "workflow_id": "wf"}],
    }
    document.update(overrides)
    return document


def problems(document: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(document, "demo.yaml")

    return caught.value.problems


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_demo_config_is_valid() -> None:
    """The demo config shipped with the project loads without errors."""
    loaded = load(REPO / "config" / "demo.yaml")
    assert len(loaded.settings.accounts) == 2
    assert sum(1 for _ in loaded.settings.instances()) == 4
    assert len(loaded.settings.jobs) >= 10


def test_defaults_are_filled_in() -> None:
    """Omitted keys take the documented defaults."""
    settings = parse(base(), "demo.yaml")
    account = settings.accounts[0]
    assert account.max_parallel == 200
    assert account.instances[0].max_parallel == 10
    assert settings.server.host == "127.0.0.1"
    job = settings.jobs[0]
    assert job.max_attempts == 3
    assert job.priority == 0
    assert job.time_window.type == "MOST_RECENT_DAY"  # type: ignore[union-attr]


def test_unknown_instance_names_the_known_ones() -> None:
    """A job on an unknown instance gets the issue's exact one-line error."""
    document = base(
        jobs=[
            {"name": "a", "instance": "amc1", "workflow_id": "w"},
            {"name": "b", "instance": "amc2", "workflow_id": "w"},
            {"name": "c", "instance": "amc9", "workflow_id": "w"},
        ]
    )
    assert problems(document) == [
        "demo.yaml: jobs[2].instance: unknown instance 'amc9' (known: amc1, amc2)"
    ]


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (
            {"name": "a", "instance": "amc1"},
            "demo.yaml: jobs[0]: set exactly one of workflow_id and sql",
        ),
        (
            {"name": "a", "instance": "amc1", "workflow_id": "w", "sql": "select 1"},
            "demo.yaml: jobs[0]: set exactly one of workflow_id and sql",
        ),
        (
            {"name": "a", "instance": "amc1", "sql": "  "},
            "demo.yaml: jobs[0].sql: must not be blank",
        ),
        (
            {"name": "a", "instance": "amc1", "workflow_id": "w", "colour": "red"},
            "demo.yaml: jobs[0].colour: unknown key",
        ),
        (
            {"instance": "amc1", "workflow_id": "w"},
            "demo.yaml: jobs[0].name: missing required key",
        ),
        (
            {"name": "a b", "instance": "amc1", "workflow_id": "w"},
            "demo.yaml: jobs[0].name: string should match pattern"
            " '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'",
        ),
        (
            {"name": "a", "instance": "amc1", "workflow_id": "w", "max_attempts": 0},
            "demo.yaml: jobs[0].max_attempts: input should be greater than 0",
        ),
        (
            {
                "name": "a",
                "instance": "amc1",
                "workflow_id": "w",
                "time_zone": "Mars/Base",
            },
            "demo.yaml: jobs[0].time_zone: unknown IANA time zone 'Mars/Base'",
        ),
        (
            {"name": "a", "instance": "amc1", "workflow_id": "w", "timeout": "soon"},
            "demo.yaml: jobs[0].timeout: invalid duration 'soon':"
            " expected a duration such as 30s, 15m, 2h or 7d",
        ),
        (
            {"name": "a", "instance": "amc1", "workflow_id": "w", "timeout": "-5m"},
            "demo.yaml: jobs[0].timeout: invalid duration '-5m':"
            " expected a duration such as 30s, 15m, 2h or 7d",
        ),
    ],
)
def test_job_field_errors(job: dict[str, Any], expected: str) -> None:
    """Each fault in a job is one line naming the file, key path and fault."""
    assert problems(base(jobs=[job])) == [expected]


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (
            {"type": "EXPLICIT", "start": "2026-05-20T00:00:00"},
            "time_window.end: missing required key",
        ),
        (
            {"type": "EXPLICIT", "start": "2026-05-20", "end": "2026-05-19"},
            "time_window: start must be before end",
        ),
        (
            {"type": "EXPLICIT", "start": "20/05/2026", "end": "2026-05-21"},
            "time_window.start: invalid time '20/05/2026'",
        ),
        (
            {"type": "most_recent_day"},
            "time_window.type: invalid window type 'most_recent_day'",
        ),
        ({"last": "7d", "lag": "2x"}, "time_window.lag: invalid duration '2x'"),
        ({"last": "0d"}, "time_window.last: must be a positive duration"),
        ({"last": "1d", "align": "fortnight"}, "time_window.align: input should be"),
        (
            {"last": "1d", "time_zone": "Nowhere"},
            "time_window.time_zone: unknown IANA time zone",
        ),
    ],
)
def test_time_window_errors(window: dict[str, Any], expected: str) -> None:
    """A malformed time window is reported at its own key path."""
    job = {"name": "a", "instance": "amc1", "workflow_id": "w", "time_window": window}
    (line,) = problems(base(jobs=[job]))
    assert line.startswith(f"demo.yaml: jobs[0].{expected}"), line


def test_time_window_shapes_parse() -> None:
    """Relative, explicit and AMC window rules each parse to their own type."""
    jobs = [
        {
            "name": "r",
            "instance": "amc1",
            "workflow_id": "w",
            "time_window": {"last": "7d"},
        },
        {
            "name": "e",
            "instance": "amc1",
            "workflow_id": "w",
            "time_window": {
                "type": "EXPLICIT",
                "start": "TODAY(-2)",
                "end": "TODAY(0)",
            },
        },
    ]
    settings = parse(base(jobs=jobs), "demo.yaml")
    relative = settings.jobs[0].time_window
    assert isinstance(relative, RelativeWindowRule)
    assert relative.last == timedelta(days=7)
    assert relative.lag == timedelta(hours=48)
    assert isinstance(settings.jobs[1].time_window, ExplicitWindowRule)


def test_yaml_timestamps_are_accepted_as_window_bounds(tmp_path: Path) -> None:
    """Unquoted YAML dates and times become AMC times."""
    path = write(
        tmp_path,
        """
        amc: {api_url: simulator}
        accounts: [{id: E, marketplace_id: M, instances: [{id: amc1}]}]
        jobs:
          - name: a
            instance: amc1
            workflow_id: w
            time_window: {type: EXPLICIT, start: 2026-05-20, end: 2026-05-21T06:00:00}
        """,
    )
    window = load(path).settings.jobs[0].time_window
    assert isinstance(window, ExplicitWindowRule)
    assert (window.start, window.end) == ("2026-05-20T00:00:00", "2026-05-21T06:00:00")


def test_limits_and_uniqueness_are_cross_checked() -> None:
    """Duplicates and an instance limit above its account's are all reported."""
    document = base(
        accounts=[
            {
                "id": "E1",
                "marketplace_id": "M",
                "max_parallel": 5,
                "instances": [{"id": "amc1", "max_parallel": 6}, {"id": "amc1"}],
            },
            {"id": "E1", "marketplace_id": "M", "instances": [{"id": "amc2"}]},
        ],
        jobs=[
            {"name": "a", "instance": "amc1", "workflow_id": "w"},
            {"name": "a", "instance": "amc2", "workflow_id": "w"},
        ],
    )
    assert problems(document) == [
        "demo.yaml: accounts[0].instances[0].max_parallel: 6 is above its account's"
        " max_parallel 5",
        "demo.yaml: accounts[0].instances[1].id: duplicate instance id 'amc1'"
        " (also in account 'E1')",
        "demo.yaml: accounts[0].instances[1].max_parallel: 10 is above its account's"
        " max_parallel 5",
        "demo.yaml: accounts[1].id: duplicate account id 'E1'",
        "demo.yaml: jobs[1].name: duplicate job name 'a'",
    ]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_parallel", 0, "accounts[0].max_parallel: input should be greater than 0"),
        ("instances", [], "accounts[0].instances: list should have at least 1 item"),
        (
            "marketplace_id",
            None,
            "accounts[0].marketplace_id: input should be a valid string",
        ),
    ],
)
def test_account_errors(field: str, value: Any, expected: str) -> None:
    """Account faults name the account's index and key."""
    document = base()
    document["accounts"][0][field] = value
    (line, *_) = problems(document)
    assert line.startswith(f"demo.yaml: {expected}"), line


def test_invalid_cron_is_reported() -> None:
    """A cron expression APScheduler cannot parse is an error on its key."""
    job = {
        "name": "a",
        "instance": "amc1",
        "workflow_id": "w",
        "schedule": "61 * * * *",
    }
    (line,) = problems(base(jobs=[job]))
    assert line.startswith(
        "demo.yaml: jobs[0].schedule: invalid cron expression '61 * * * *'"
    )


def test_real_api_needs_credentials() -> None:
    """Outside the simulator, the Login with Amazon credentials are required."""
    document = base(amc={"api_url": "https://advertising-api.amazon.com"})
    assert problems(document) == [
        "demo.yaml: amc: client_id, client_secret, refresh_token required when"
        " api_url is not 'simulator'"
    ]


def test_api_url_must_be_a_url() -> None:
    """An api_url that is neither a URL nor 'simulator' is refused."""
    (line,) = problems(base(amc={"api_url": "advertising-api.amazon.com"}))
    assert line.startswith("demo.yaml: amc.api_url: expected an http(s) URL")


def test_missing_top_level_sections() -> None:
    """amc and accounts are required; a non-mapping document is refused."""
    assert problems({"jobs": []}) == [
        "demo.yaml: amc: missing required key",
        "demo.yaml: accounts: missing required key",
    ]
    assert problems(["not", "a", "mapping"]) == [
        "demo.yaml: expected a mapping of settings at the top level"
    ]


def test_environment_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    """${NAME} takes the environment's value; $${ stays literal."""
    monkeypatch.setenv("AMC_SECRET", "s3cr3t-value")
    monkeypatch.setenv("AMC_REFRESH", "Atzr|refresh")
    document = base(
        amc={
            "api_url": "https://advertising-api.amazon.com",
            "client_id": "amzn1.application-oa2-client.x",
            "client_secret": "${AMC_SECRET}",
            "refresh_token": "${AMC_REFRESH}",
        },
        jobs=[{"name": "a", "instance": "amc1", "sql": "select '$${literal}'"}],
    )
    settings = parse(document, "demo.yaml")
    assert settings.amc.client_secret is not None
    assert settings.amc.client_secret.get_secret_value() == "s3cr3t-value"
    assert settings.jobs[0].sql == "select '${literal}'"


def test_missing_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable is an error naming the variable and the key."""
    monkeypatch.delenv("AMC_NOT_SET", raising=False)
    document = base(server={"api_token": "${AMC_NOT_SET}"})
    assert problems(document) == [
        "demo.yaml: server.api_token: environment variable AMC_NOT_SET is not set"
    ]


def test_invalid_variable_name() -> None:
    """${...} with a name that cannot be a variable is refused."""
    document = base(server={"api_token": "${not valid}"})
    assert problems(document) == [
        "demo.yaml: server.api_token: invalid variable name 'not valid'"
    ]


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets are held in a type whose str, repr and dump hide the value."""
    document = base(
        amc={
            "api_url": "https://advertising-api.amazon.com",
            "client_id": "client",
            "client_secret": "very-secret-1",
            "refresh_token": "Atzr|very-secret-2",
        },
        server={"api_token": "very-secret-3"},
        database={"url": "postgresql://u:very-secret-4@db/amc"},
    )
    settings = parse(document, "demo.yaml")
    shown = " ".join(
        [str(settings), repr(settings), settings.model_dump_json(), str(settings.amc)]
    )
    for secret in ("very-secret-1", "very-secret-2", "very-secret-3", "very-secret-4"):
        assert secret not in shown

    assert set(settings.secrets()) >= {
        "very-secret-1",
        "Atzr|very-secret-2",
        "very-secret-3",
        "very-secret-4",
    }


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    """data_dir and results.dir are relative to the config file's directory."""
    path = write(
        tmp_path,
        """
        database: {data_dir: state/pg}
        results: {dir: out}
        amc: {api_url: simulator}
        accounts: [{id: E, marketplace_id: M, instances: [{id: amc1}]}]
        """,
    )
    settings = load(path).settings
    assert settings.database.data_dir == tmp_path / "state" / "pg"
    assert settings.results.dir == tmp_path / "out"


def test_environment_database_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """AMC_SCHEDULER_DATABASE_URL overrides database.url."""
    settings = parse(base(database={"url": "postgresql://file/db"}), "demo.yaml")
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    assert database_url(settings) == "postgresql://file/db"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://env/db")
    assert database_url(settings) == "postgresql://env/db"
    assert database_url(parse(base(), "demo.yaml")) == "postgresql://env/db"
    monkeypatch.delenv(DATABASE_URL_ENV)
    assert database_url(parse(base(), "demo.yaml")) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amc: [unclosed\n", "c.yaml:2:1: invalid YAML:"),
        (
            "amc: {api_url: simulator}\namc: {api_url: simulator}\n",
            "c.yaml:2:1: invalid YAML: duplicate key 'amc' (first on line 1)",
        ),
        ("- a\n- b\n", "c.yaml: expected a mapping of settings at the top level"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    """YAML syntax errors and duplicate keys give the file, line and column."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)

    (line,) = caught.value.problems
    assert line.startswith(str(tmp_path / expected)), line


def test_missing_and_binary_files(tmp_path: Path) -> None:
    """A missing file and a non-UTF-8 file are one-line errors."""
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load(tmp_path / "nope.yaml")

    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00amc")
    with pytest.raises(ConfigError, match=r"bin\.yaml: is not UTF-8 text"):
        load(binary)


def test_round_trip_through_yaml_dump() -> None:
    """A document that validated once validates again after a YAML round trip."""
    document = base()
    again = yaml.safe_load(yaml.safe_dump(document))
    assert parse(again, "x.yaml") == parse(document, "x.yaml")


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commented production example validates once its variables are set."""
    for name in (
        "DATABASE_URL",
        "AMC_CLIENT_ID",
        "AMC_CLIENT_SECRET",
        "AMC_REFRESH_TOKEN",
        "AMC_SCHEDULER_API_TOKEN",
    ):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")

    settings = load(REPO / "config" / "example.yaml").settings
    assert settings.amc.api_url == "https://advertising-api.amazon.com"
    assert [job.name for job in settings.jobs] == [
        "weekly-path-to-purchase",
        "adhoc-audience-overlap",
    ]
    assert settings.jobs[0].schedule == "0 6 * * MON"
