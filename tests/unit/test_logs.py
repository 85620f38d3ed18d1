from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from scheduler import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Logging configured to a buffer, restored to the suite's setup after."""
    stream = io.StringIO()
    logs.configure(level="debug", fmt="json", stream=stream)
    yield stream
    logs.configure(level="debug", fmt="json")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_events_are_json_lines(captured: io.StringIO) -> None:
    """An event is one JSON object with its name, level, time and fields."""
    logs.get_logger("scheduler.test").info("run_submitted", run_id=7, attempt=1)
    (line,) = lines(captured)
    assert line["event"] == "run_submitted"
    assert line["level"] == "info"
    assert line["run_id"] == 7
    assert line["attempt"] == 1
    assert str(line["timestamp"]).endswith("Z")
    assert list(line)[:3] == ["timestamp", "level", "event"]


def test_stdlib_loggers_share_the_pipeline(captured: io.StringIO) -> None:
    """Library loggers (aiohttp, SQLAlchemy...) come out as the same JSON lines."""
    logging.getLogger("aiohttp.server").error("connection lost to %s", "peer")
    (line,) = lines(captured)
    assert line["event"] == "connection lost to peer"
    assert line["logger"] == "aiohttp.server"
    assert line["level"] == "error"


def test_secrets_are_masked_everywhere(captured: io.StringIO) -> None:
    """A registered secret is masked in fields, messages, nesting and tracebacks."""
    logs.redactor.add(["Atzr|top-secret-refresh"])
    log = logs.get_logger("scheduler.test")
    log.info("token_refreshed", body={"refresh_token": "Atzr|top-secret-refresh"})
    logging.getLogger("aiohttp.client").warning("sent Atzr|top-secret-refresh")
    try:
        raise RuntimeError("failed with Atzr|top-secret-refresh")
    except RuntimeError:
        log.exception("call_failed")

    output = captured.getvalue()
    assert "top-secret-refresh" not in output
    assert output.count(logs.MASK) >= 3


def test_console_renderer_when_asked() -> None:
    """fmt=console renders text, not JSON."""
    stream = io.StringIO()
    logs.configure(level="info", fmt="console", stream=stream)
    try:
        logs.get_logger("t").info("service_started", jobs=3)
    finally:
        logs.configure(level="debug", fmt="json")

    text = stream.getvalue()
    assert "service_started" in text
    assert "jobs=3" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_level_filters_debug(captured: io.StringIO) -> None:
    """Below the configured level nothing is written."""
    logs.configure(level="warning", fmt="json", stream=captured)
    log = logs.get_logger("t")
    log.info("quiet_event")
    log.warning("loud_event")
    assert [line["event"] for line in lines(captured)] == ["loud_event"]


def test_redactor_prefers_longest_secret() -> None:
    """A secret containing another secret is masked whole."""
    redactor = logs.Redactor()
    redactor.add(["abcd", "abcdefgh"])
    assert redactor.mask("x abcdefgh y abcd") == "x *** y ***"


def test_structlog_is_configured_for_stdlib() -> None:
    """The structlog configuration renders through the stdlib handler."""
    assert structlog.is_configured()
