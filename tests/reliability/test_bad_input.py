"""Bad input: generated config files, the daemon's refusals, and the HTTP API fuzzed.

Whatever the file or the request, the answer is a clean refusal: one line per
fault naming the file (the CLI), or a documented status with a JSON error (the
API); never a traceback, never a 5xx.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from scheduler.cli import main
from scheduler.config import DATABASE_URL_ENV
from scheduler.logs import configure
from scheduler.web import MAX_BODY
from tests.support.daemon import Daemon, base_config, run_cli, write_config
from tests.support.postgres import PostgresServer, new_database_name, render

TOKEN = "test-token-123"
SET_VARIABLE = "AMCS_FUZZ_TOKEN"
UNSET_PREFIX = "AMCS_FUZZ_UNSET_"
Draw = Callable[[st.SearchStrategy[Any]], Any]
Path_ = tuple[int | str, ...]

# What the runs of the suite counted, for docs/reliability.md.
FIGURES: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    """Print what the module counted (seen with -s), for docs/reliability.md."""
    yield
    print(f"\nbad-input figures: {json.dumps(FIGURES, sort_keys=True)}")


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """check-config in-process points logging at the runner's stream; undo it."""
    monkeypatch.setenv(SET_VARIABLE, "fuzz-token-value")
    yield
    configure(level="debug", fmt="json")


# A valid document and the ways to break it


def base_document() -> dict[str, Any]:
    """A valid config touching most sections, with durations, zones and crons."""
    return {
        "database": {"data_dir": "pg", "pool_size": 5, "connect_timeout": "10s"},
        "amc": {
            "api_url": "simulator",
            "requests_per_second": 5,
            "burst": 20,
            "timeout": "30s",
            "simulator": {
                "speed": 600,
                "seed": 1,
                "duration": "20m",
                "failure_rate": 0.1,
                "faults": {"throttle_rate": 0.0, "slow_by": "2s"},
            },
        },
        "accounts": [
            {
                "id": "ENTITYFUZZ1",
                "marketplace_id": "ATVPDKIKX0DER",
                "max_parallel": 20,
                "instances": [
                    {"id": "amcfuzz1", "max_parallel": 10},
                    {"id": "amcfuzz2", "max_parallel": 5},
                ],
            },
            {
                "id": "ENTITYFUZZ2",
                "marketplace_id": "A1F83G8C2ARO7P",
                "instances": [{"id": "amcfuzz3"}],
            },
        ],
        "jobs": [
            {
                "name": "daily",
                "instance": "amcfuzz1",
                "workflow_id": "wf_daily",
                "schedule": "0 6 * * *",
                "time_zone": "America/New_York",
                "time_window": {
                    "last": "7d",
                    "lag": "2d",
                    "align": "day",
                    "time_zone": "America/New_York",
                },
                "parameters": {"since": "TODAY(-3)"},
                "max_attempts": 3,
                "priority": 5,
                "timeout": "2h",
            },
            {
                "name": "adhoc",
                "instance": "amcfuzz3",
                "sql": "SELECT 1 FROM t",
                "time_window": {
                    "type": "EXPLICIT",
                    "start": "2026-05-01T00:00:00",
                    "end": "2026-05-08T00:00:00",
                    "time_zone": "Europe/Berlin",
                },
            },
            {
                "name": "recent",
                "instance": "amcfuzz2",
                "workflow_id": "wf_recent",
                "time_window": {"type": "MOST_RECENT_DAY"},
                "schedule": "*/30 * * * *",
            },
        ],
        "dispatcher": {
            "poll_min": "15s",
            "poll_max": "5m",
            "lease": "2m",
            "retry_base": "30s",
            "retry_max": "30m",
        },
        "results": {"dir": "results", "wait": "1h"},
        "schedules": {"catch_up": "coalesce", "max_catch_up": 100},
        "server": {
            "host": "127.0.0.1",
            "port": 8080,
            "api_token": "${AMCS_FUZZ_TOKEN}",
        },
        "logging": {"level": "info", "format": "json"},
    }


def _walk(value: Any, where: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    yield where, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*where, index))


def _paths(document: Any, keep: Callable[[Path_, Any], bool]) -> list[Path_]:
    return [where for where, value in _walk(document) if where and keep(where, value)]


def _set(document: Any, where: Path_, value: Any) -> None:
    parent = document
    for part in where[:-1]:
        parent = parent[part]

    parent[where[-1]] = value


_DURATION = re.compile(r"^\d+[smhdw]$")
_LIMITS = {
    "max_parallel",
    "port",
    "priority",
    "max_attempts",
    "pool_size",
    "burst",
    "max_catch_up",
    "requests_per_second",
    "speed",
    "failure_rate",
    "throttle_rate",
}
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
)
ANY_VALUE = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
)


def _pick(draw: Draw, document: Any, keep: Callable[[Path_, Any], bool]) -> Path_:
    found = _paths(document, keep)
    if not found:
        found = _paths(document, lambda where, value: True)

    return tuple(draw(st.sampled_from(found)))


def wrong_type(draw: Draw, document: Any) -> None:
    _set(document, _pick(draw, document, lambda w, v: True), draw(ANY_VALUE))


def unknown_key(draw: Draw, document: Any) -> None:
    where = _pick(draw, document, lambda w, v: isinstance(v, dict))
    parent = document
    for part in where:
        parent = parent[part]

    if isinstance(parent, dict):
        key = draw(
            st.one_of(
                st.sampled_from(
                    ["colour", "jobz", "api-url", "Server", "max parallel"]
                ),
                st.text(min_size=1, max_size=12),
            )
        )
        parent[key] = draw(SCALARS)


def missing_key(draw: Draw, document: Any) -> None:
    where = _pick(draw, document, lambda w, v: isinstance(v, dict) and bool(v))
    parent = document
    for part in where:
        parent = parent[part]

    if isinstance(parent, dict) and parent:
        del parent[draw(st.sampled_from(sorted(parent, key=str)))]
    elif isinstance(document, dict) and document:
        del document[draw(st.sampled_from(sorted(document)))]


def bad_duration(draw: Draw, document: Any) -> None:
    where = _pick(
        draw, document, lambda w, v: isinstance(v, str) and bool(_DURATION.match(v))
    )
    value = draw(
        st.one_of(
            st.sampled_from(
                [
                    "",
                    "0s",
                    "-5m",
                    "5 minutes",
                    "1x",
                    "m",
                    "1.5.5h",
                    "99999999999d",
                    "1e9d",
                    "inf",
                    "nan",
                    "P1D",
                    "10**9w",
                ]
            ),
            st.integers(-(10**20), 10**20),
            st.floats(),
            st.text(max_size=10),
        )
    )
    _set(document, where, value)


def bad_cron(draw: Draw, document: Any) -> None:
    where = _pick(draw, document, lambda w, v: w[-1] == "schedule")
    value = draw(
        st.one_of(
            st.sampled_from(
                [
                    "",
                    "* * * *",
                    "61 * * * *",
                    "0 25 * * *",
                    "0 0 32 * *",
                    "0 0 * 13 *",
                    "0 0 * * 8",
                    "@yearly",
                    "*/0 * * * *",
                    "a b c d e",
                    "* * * * * *",
                    "0-70/5 * * * *",
                ]
            ),
            st.text(max_size=20),
        )
    )
    _set(document, where, value)


def bad_zone(draw: Draw, document: Any) -> None:
    where = _pick(draw, document, lambda w, v: w[-1] == "time_zone")
    value = draw(
        st.one_of(
            st.sampled_from(
                [
                    "Mars/Base",
                    "",
                    "UTC+5",
                    "EST5EDT ",
                    "../../etc/passwd",
                    "/etc/localtime",
                    "America/New_York\x00",
                    "utc",
                    "Europe",
                ]
            ),
            st.text(max_size=20),
            st.integers(),
        )
    )
    _set(document, where, value)


def duplicate(draw: Draw, document: Any) -> None:
    kind = draw(st.sampled_from(["account", "instance", "job"]))
    accounts = document.get("accounts")
    jobs = document.get("jobs")
    if kind == "account" and isinstance(accounts, list) and len(accounts) > 1:
        if isinstance(accounts[1], dict) and isinstance(accounts[0], dict):
            accounts[1]["id"] = accounts[0].get("id")
    elif kind == "instance" and isinstance(accounts, list) and len(accounts) > 1:
        first, second = accounts[0], accounts[1]
        if isinstance(first, dict) and isinstance(second, dict):
            second["instances"] = copy.deepcopy(first.get("instances"))
    elif isinstance(jobs, list) and jobs:
        jobs.append(copy.deepcopy(jobs[draw(st.integers(0, len(jobs) - 1))]))


def out_of_range(draw: Draw, document: Any) -> None:
    where = _pick(draw, document, lambda w, v: w[-1] in _LIMITS)
    value = draw(
        st.one_of(
            st.integers(-(10**6), 0),
            st.integers(10**3, 10**30),
            st.sampled_from([-1, 0, 1001, 65536, 2**63, -(2**63) - 1, 1.5, 1e308]),
        )
    )
    _set(document, where, value)


def env_variable(draw: Draw, document: Any) -> None:
    where = _pick(draw, document, lambda w, v: isinstance(v, str))
    name = draw(
        st.one_of(
            st.sampled_from([SET_VARIABLE, f"{UNSET_PREFIX}X", "1BAD", "", "A-B"]),
            st.from_regex(r"[A-Z_]{1,8}", fullmatch=True).map(
                lambda text: UNSET_PREFIX + text
            ),
        )
    )
    template = draw(
        st.sampled_from(["${%s}", "x${%s}y", "$${%s}", "${%s", "${%s}${%s}"])
    )
    _set(document, where, template.replace("%s", name))


def huge_value(draw: Draw, document: Any) -> None:
    where = _pick(draw, document, lambda w, v: True)
    size = draw(st.integers(10_000, 200_000))
    value = draw(
        st.sampled_from(
            [
                "x" * size,
                list(range(size // 20)),
                10 ** (size // 500),
                1e308,
                {f"k{n}": n for n in range(size // 100)},
            ]
        )
    )
    _set(document, where, value)


def deep_nesting(draw: Draw, document: Any) -> None:
    where = _pick(draw, document, lambda w, v: True)
    depth = draw(st.integers(20, 3000))
    kind = draw(st.sampled_from(["list", "map"]))
    _set(document, where, f"DEEPNEST{kind}{depth}")


MUTATIONS = [
    wrong_type,
    unknown_key,
    missing_key,
    bad_duration,
    bad_cron,
    bad_zone,
    duplicate,
    out_of_range,
    env_variable,
    huge_value,
    deep_nesting,
]
INVALID_MUTATIONS = [
    unknown_key,
    bad_cron,
    bad_zone,
    duplicate,
    out_of_range,
    env_variable,
]


def _nest(match: re.Match[str]) -> str:
    depth = int(match.group(2))
    if match.group(1) == "list":
        return "[" * depth + "]" * depth

    return "{a: " * depth + "1" + "}" * depth


YAML_SNIPPETS = [
    "\t",
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "&a ",
    "*a",
    "*nowhere ",
    "!!python/object/apply:os.system ['true'] ",
    "? ",
    "%YAML 9.9\n",
    "\x00",
    "'",
    '"',
    "---\n",
    "...\n",
    "a: &a [*a]\n",
    "? [1, 2]\n: 3\n",
    "amc: {}\n",
]
NOT_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xfe\xff", b"\x80", b"\xc0\xaf"]


@st.composite
def config_files(draw: Draw, mutations: list[Any] = MUTATIONS) -> bytes:
    """A valid config file broken in up to three ways, then maybe at the byte level."""
    document = base_document()
    for _ in range(draw(st.integers(0 if mutations is MUTATIONS else 1, 3))):
        draw(st.sampled_from(mutations))(draw, document)

    text = yaml.safe_dump(document, sort_keys=False, width=1_000_000)
    text = re.sub(r"DEEPNEST(list|map)(\d+)", _nest, text)
    layer = draw(st.sampled_from(["none", "none", "none", "yaml", "bytes", "top"]))
    if layer == "yaml":
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at]
        else:
            text = text[:at] + draw(st.sampled_from(YAML_SNIPPETS)) + text[at:]
    elif layer == "top":
        text = draw(st.sampled_from(["- 1\n", "42\n", "", "null\n", "'x'\n", "[]\n"]))

    raw = text.encode()
    if layer == "bytes":
        at = draw(st.integers(0, len(raw)))
        if draw(st.integers(0, 5)) == 0:
            raw = text.encode("utf-16")
        else:
            raw = raw[:at] + draw(st.sampled_from(NOT_UTF8)) + raw[at:]

    return raw


def check_config(path: Path) -> tuple[int, list[str], str]:
    """check-config in-process: exit code, stderr lines, stdout."""
    result = CliRunner().invoke(main, ["check-config", str(path)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"check-config raised {result.exception!r}")

    assert "Traceback" not in result.output
    return result.exit_code, result.stderr.splitlines(), result.stdout


def assert_clean_verdict(path: Path) -> tuple[int, list[str]]:
    """Exit 0 with the summary, or 1 with every stderr line naming the file."""
    code, lines, out = check_config(path)
    if code == 0:
        assert out.startswith(f"{path}: ok\n")
        assert lines == []
    else:
        assert code == 1, (code, lines)
        assert lines, "exit 1 with nothing on stderr"
        strays = [line for line in lines if not line.startswith(f"{path}:")]
        assert strays == [], f"lines not naming the file: {strays}"

    return code, lines


# The config file


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=config_files())
def test_generated_config_files_get_a_clean_verdict(
    tmp_path: Path, content: bytes
) -> None:
    """check-config on mutated files: exit 0 with a summary or 1 with FILE: lines."""
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    code, lines = assert_clean_verdict(path)
    FIGURES["config_inputs"] = FIGURES.get("config_inputs", 0) + 1
    FIGURES[f"config_exit_{code}"] = FIGURES.get(f"config_exit_{code}", 0) + 1
    FIGURES["config_fault_lines"] = FIGURES.get("config_fault_lines", 0) + len(lines)


def _document_text(change: Callable[[dict[str, Any]], None]) -> bytes:
    document = base_document()
    change(document)
    return yaml.safe_dump(document, sort_keys=False).encode()


def _set_in(where: Path_, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda document: _set(document, where, value)


EDGE_CASES: dict[str, bytes] = {
    "huge duration string": _document_text(
        _set_in(("dispatcher", "lease"), "99999999999d")
    ),
    "huge duration number": _document_text(_set_in(("dispatcher", "lease"), 10**30)),
    "infinite duration": _document_text(_set_in(("dispatcher", "lease"), float("inf"))),
    "huge relative window": _document_text(
        _set_in(("jobs", 0, "time_window", "last"), "99999999999d")
    ),
    "list nested 5000 deep": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "mapping nested 3000 deep": b"jobs: " + b"{a: " * 3000 + b"1" + b"}" * 3000,
    "recursive alias": b"amc: &a [*a]\n",
    "list as a mapping key": b"? [1, 2]\n: 3\n",
    "newline in an unknown key": _document_text(_set_in(("amc", "x\ny"), 1)),
    "newline in a variable name": _document_text(
        _set_in(("server", "api_token"), "${A\nB}")
    ),
    "NUL in a path": _document_text(_set_in(("results", "dir"), "a\x00b")),
    "not UTF-8": b"amc: {api_url: \xff}\n",
    "UTF-16": "amc: {api_url: simulator}\n".encode("utf-16"),
    "tab indentation": b"amc:\n\tapi_url: simulator\n",
    "unset variable": _document_text(
        _set_in(("amc", "api_url"), f"${{{UNSET_PREFIX}URL}}")
    ),
    # check-config accepts these today; `run` then dies resolving them at start-up.
    "date expression out of range in a parameter": _document_text(
        _set_in(("jobs", 1, "parameters"), {"since": "TODAY(-99999999)"})
    ),
    "date expression out of range in a window": _document_text(
        _set_in(
            ("jobs", 1, "time_window"),
            {"type": "EXPLICIT", "start": "TODAY(-99999999)", "end": "TODAY(0)"},
        )
    ),
    "python tag": b"amc: !!python/object/apply:os.system ['true']\n",
    "top-level list": b"- amc\n",
    "empty file": b"",
}


@pytest.mark.parametrize("content", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_edge_case_config_files_get_a_clean_verdict(
    tmp_path: Path, content: bytes
) -> None:
    """Known-awkward files: exit 1 and every stderr line names the file."""
    path = tmp_path / "edge.yaml"
    path.write_bytes(content)
    code, _ = assert_clean_verdict(path)
    assert code == 1


@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=config_files(mutations=INVALID_MUTATIONS))
def test_run_refuses_generated_invalid_files(tmp_path: Path, content: bytes) -> None:
    """`run` on a generated invalid file: exit 1, the same one line per fault."""
    path = tmp_path / "invalid.yaml"
    path.write_bytes(content)
    code, expected = assert_clean_verdict(path)
    assume(code == 1)
    result = run_cli("run", "--config", str(path))
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 1
    assert result.stderr.splitlines() == expected
    FIGURES["run_invalid_files"] = FIGURES.get("run_invalid_files", 0) + 1


BAD_DATABASE_URLS = {
    "nobody listening": "postgresql://postgres@127.0.0.1:1/x",
    "port not a number": "postgresql://postgres@127.0.0.1:notaport/x",
    "not Postgres": "mysql://root@127.0.0.1:1/x",
    "not a URL": "just some words",
}


@pytest.mark.parametrize(
    "url", BAD_DATABASE_URLS.values(), ids=BAD_DATABASE_URLS.keys()
)
def test_run_with_a_bad_database_url_exits_with_one_clear_line(
    tmp_path: Path, url: str
) -> None:
    """A valid config and an unusable database URL: exit 1, one clear line."""
    document = base_config(logging={"level": "info", "format": "json"})
    path = write_config(tmp_path / "valid.yaml", document)
    result = run_cli("run", "--config", str(path), env={DATABASE_URL_ENV: url})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("amc-scheduler: ")
    assert "internal error" not in lines[0]
    if url == BAD_DATABASE_URLS["nobody listening"]:
        assert "database unreachable" in lines[0]


# The HTTP API

JOBS = [
    {
        "name": "weekly",
        "instance": "amctest1",
        "workflow_id": "wf_weekly",
        "time_window": {"last": "7d", "align": "day"},
        "schedule": "0 6 * * 1",
    },
    {
        "name": "adhoc",
        "instance": "amctest2",
        "sql": "SELECT 1 FROM t",
        "parameters": {"since": "TODAY(-3)"},
    },
]


def _start_daemon(tmp: Path, url: str) -> Daemon:
    document = base_config(jobs=JOBS, logging={"level": "info", "format": "json"})
    config = write_config(tmp / "api.yaml", document)
    running = Daemon(config, env={DATABASE_URL_ENV: url}).start()
    running.wait_for("service_started")
    return running


@pytest.fixture(scope="module")
def module_database(pg_server: PostgresServer, template_database: str) -> Iterator[str]:
    """A fresh migrated database shared by the requests of this module."""
    name = new_database_name()
    url = asyncio.run(pg_server.create_database(name, template=template_database))
    yield render(url)
    asyncio.run(pg_server.drop_database(name))


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, module_database: str
) -> Iterator[Daemon]:
    """One daemon on the in-process simulator, two jobs, for the request tests."""
    running = _start_daemon(tmp_path_factory.mktemp("api"), module_database)
    try:
        yield running
        assert running.stop() == 0
    finally:
        running.__exit__()


@pytest.fixture
def fresh_daemon(tmp_path: Path, database_url: str) -> Iterator[Daemon]:
    """A daemon of its own on a fresh database, for schemathesis."""
    running = _start_daemon(tmp_path, database_url)
    try:
        yield running
        assert running.stop() == 0
    finally:
        running.__exit__()


def send(
    daemon: Daemon,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    chunked: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """A raw request: the bytes given, as given."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        all_headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        payload: Any = body
        if chunked and body is not None:
            payload = iter([body[i : i + 8192] for i in range(0, len(body), 8192)])

        connection.request(
            method, path, body=payload, headers=all_headers, encode_chunked=chunked
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _json_error(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    document = json.loads(body)
    assert isinstance(document, dict)
    assert set(document) == {"error"}
    assert isinstance(document["error"], str)
    assert document["error"]
    return str(document["error"])


def _object(padding: int) -> bytes:
    return b'{"job": "weekly"' + b" " * padding + b"}"


BAD_BODIES: list[tuple[str, bytes, int]] = [
    ("malformed JSON", b'{"job": "weekly"', 400),
    ("not JSON at all", b"job=weekly", 400),
    ("not UTF-8", b'{"job": "\xff"}', 400),
    ("empty body", b"", 400),
    ("JSON null", b"null", 400),
    ("a list", b'[{"job": "weekly"}]', 400),
    ("a string", b'"weekly"', 400),
    ("a number", b"42", 400),
    ("unknown field", b'{"job": "weekly", "colour": "red"}', 400),
    ("job is a number", b'{"job": 5}', 400),
    ("job is empty", b'{"job": ""}', 400),
    ("job missing", b'{"window": null}', 400),
    ("window is a string", b'{"job": "weekly", "window": "last week"}', 400),
    ("parameters is a list", b'{"job": "weekly", "parameters": [1]}', 400),
    ("no such job", b'{"job": "nope"}', 404),
    (
        "window start after end",
        b'{"job": "weekly", "window": {"start": "2026-05-08", "end": "2026-05-01"}}',
        400,
    ),
    (
        "window start not a time",
        b'{"job": "weekly", "window": {"start": "yesterday", "end": "2026-05-01"}}',
        400,
    ),
    (
        "window of a malformed type",
        b'{"job": "weekly", "window": {"type": "last week"}}',
        400,
    ),
    (
        "window in an unknown zone",
        b'{"job": "weekly", "window": {"start": "2026-05-01", "end": "2026-05-08",'
        b' "time_zone": "Mars/Base"}}',
        400,
    ),
    (
        "window with an unknown key",
        b'{"job": "weekly", "window": {"last": "7d", "colour": 1}}',
        400,
    ),
    (
        "window lasting forever",
        b'{"job": "weekly", "window": {"last": "99999999999d"}}',
        400,
    ),
    (
        "window before year 1 in UTC",
        b'{"job": "weekly", "window": {"start": "0001-01-01", "end": "0001-01-02",'
        b' "time_zone": "Asia/Tokyo"}}',
        400,
    ),
    (
        "JSON nested 20000 deep",
        b'{"job": "weekly", "parameters": {"p": ' + b"[" * 20000 + b"]" * 20000 + b"}}",
        400,
    ),
    (
        "parameter with a NUL character",
        b'{"job": "weekly", "parameters": {"p": "a\\u0000b"}}',
        400,
    ),
]


@pytest.mark.parametrize(
    ("body", "status"),
    [(body, status) for _, body, status in BAD_BODIES],
    ids=[name for name, _, _ in BAD_BODIES],
)
def test_bad_run_requests_are_refused_with_json(
    daemon: Daemon, body: bytes, status: int
) -> None:
    """POST /api/runs with a bad body: 400 or 404, a JSON error, never a 5xx."""
    got, headers, answer = send(
        daemon, "POST", "/api/runs", body, {"Content-Type": "application/json"}
    )
    assert got == status, answer
    _json_error(got, headers, answer)


AWKWARD_BODIES: list[tuple[str, bytes]] = [
    (
        "window ending after year 9999 in UTC",
        b'{"job": "weekly", "window": {"start": "9999-12-31",'
        b' "end": "9999-12-31T23:00:00", "time_zone": "America/New_York"}}',
    ),
    ("unicode job name", '{"job": "w\u00f6chentlich \u2603"}'.encode()),
    (
        "parameters nested 200 deep",
        b'{"job": "adhoc", "parameters": {"p": ' + b"[" * 200 + b"]" * 200 + b"}}",
    ),
    (
        "many parameters",
        json.dumps(
            {"job": "adhoc", "parameters": {f"p{n}": n for n in range(3000)}}
        ).encode(),
    ),
    (
        "date expressions out of range",
        b'{"job": "adhoc", "parameters": {"a": "TODAY(-99999999)",'
        b' "b": "FIRSTDAYOFOFFSETMONTH(99999999999)"}}',
    ),
    (
        "window with null parts",
        b'{"job": "weekly", "window": null, "parameters": null}',
    ),
]


@pytest.mark.parametrize(
    "body", [body for _, body in AWKWARD_BODIES], ids=[n for n, _ in AWKWARD_BODIES]
)
def test_awkward_run_requests_are_never_a_server_error(
    daemon: Daemon, body: bytes
) -> None:
    """Odd but well-formed bodies: a run (200/201) or a JSON 400/404, never a 5xx."""
    got, headers, answer = send(
        daemon, "POST", "/api/runs", body, {"Content-Type": "application/json"}
    )
    assert got in (200, 201, 400, 404), answer
    if got >= 400:
        _json_error(got, headers, answer)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_bodies_get_413(daemon: Daemon, chunked: bool) -> None:
    """Over 64 KiB: 413 with JSON; exactly 64 KiB is read as usual."""
    too_big = _object(MAX_BODY + 1 - len(_object(0)))
    assert len(too_big) == MAX_BODY + 1
    status, headers, answer = send(
        daemon, "POST", "/api/runs", too_big, chunked=chunked
    )
    assert status == 413, answer
    _json_error(status, headers, answer)

    just_fits = _object(MAX_BODY - len(_object(0)))
    status, _, answer = send(daemon, "POST", "/api/runs", just_fits, chunked=chunked)
    assert status in (200, 201), answer


BAD_QUERIES: list[tuple[str, str, int]] = [
    ("GET", "/api/runs?limit=0", 400),
    ("GET", "/api/runs?limit=501", 400),
    ("GET", "/api/runs?limit=ten", 400),
    ("GET", "/api/runs?before=-1", 400),
    ("GET", "/api/runs?before=99999999999999999999999", 400),
    ("GET", "/api/runs?state=bogus", 400),
    ("GET", "/api/runs?job=%00", 400),
    ("GET", "/api/runs/abc", 404),
    ("GET", "/api/runs/0", 404),
    ("GET", "/api/runs/99999999999999999999999", 404),
    ("GET", "/api/runs/424242", 404),
    ("POST", "/api/runs/abc/cancel", 404),
    ("POST", "/api/runs/424242/cancel", 404),
    ("GET", "/api/nothing", 404),
    ("DELETE", "/api/runs", 405),
]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    BAD_QUERIES,
    ids=[f"{m} {p}" for m, p, _ in BAD_QUERIES],
)
def test_bad_paths_and_queries_are_refused_with_json(
    daemon: Daemon, method: str, path: str, status: int
) -> None:
    """Bad ids, limits and filters: 400/404/405 with a JSON error, never a 5xx."""
    got, headers, answer = send(daemon, method, path)
    assert got == status, answer
    if status >= 400:
        _json_error(got, headers, answer)


# Schemathesis against /api/openapi.json

SCHEMATHESIS_EXAMPLES = 60


def test_api_conforms_to_its_openapi_document(fresh_daemon: Daemon) -> None:
    """Schemathesis, positive and negative cases: no 5xx, every answer as documented."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    schema = schemathesis.openapi.from_url(fresh_daemon.url("/api/openapi.json"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    job_names = st.sampled_from([job["name"] for job in JOBS])
    responses: dict[str, int] = {}
    failures: list[str] = []
    started = time.monotonic()

    for operation in operations:
        for mode in (
            schemathesis.GenerationMode.POSITIVE,
            schemathesis.GenerationMode.NEGATIVE,
        ):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=SCHEMATHESIS_EXAMPLES,
                deadline=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            @given(case=strategy, job=job_names, real_job=st.booleans())
            def exercise(case: Any, job: str, real_job: bool) -> None:
                # Random job names all end in 404; half the bodies name a real job
                # so windows and parameters reach the code that reads them.
                if real_job and isinstance(case.body, dict) and "job" in case.body:
                    case.body["job"] = job

                response = case.call(headers=auth)
                key = f"{case.operation.label} {response.status_code}"
                try:
                    case.validate_response(response, checks=checks, headers=auth)
                except (Exception, FailureGroup) as exc:
                    failures.append(f"{key}: {exc}"[:3000])

                responses[key] = responses.get(key, 0) + 1

            try:
                exercise()
            except Unsatisfiable:
                # Nothing to make invalid: /health and /api/jobs take no input.
                assert mode is schemathesis.GenerationMode.NEGATIVE

    FIGURES["schemathesis_responses"] = sum(responses.values())
    FIGURES["schemathesis_seconds"] = round(time.monotonic() - started)
    print(json.dumps(responses, indent=1, sort_keys=True))
    assert failures == [], "\n\n".join(failures[:10])
