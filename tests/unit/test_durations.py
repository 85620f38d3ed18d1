from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("48h", timedelta(hours=48)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        (" 1H 30M ", timedelta(minutes=90)),
        (45, timedelta(seconds=45)),
        ("45", timedelta(seconds=45)),
    ],
)
def test_parse(text: object, expected: timedelta) -> None:
    """The spellings operators use all parse."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "5x", "m5", "1h 30", "-5m", True, None])
def test_parse_rejects(text: object) -> None:
    """Anything else is a ValueError that says what a duration looks like."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**8))
def test_format_round_trips(seconds: int) -> None:
    """Formatting and parsing again gives the same duration."""
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        (10**400, "(a number of more than 38 digits)"),
        (1e308, "1e+308"),
        ("9" * 400 + "d", "'" + "9" * 35 + "...'"),
    ],
)
def test_huge_durations_are_refused_and_quoted_short(
    value: object, quoted: str
) -> None:
    """Too large to convert or to quote: a ValueError, its message short."""
    message = f"duration {quoted} is longer than ten years"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(value)
