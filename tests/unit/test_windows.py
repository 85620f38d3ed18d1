from __future__ import annotations

import functools
import itertools
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from scheduler.windows import (
    AMC_WINDOW_TYPES,
    DEFAULT_LAG,
    AmcWindowRule,
    ExplicitWindowRule,
    RelativeWindowRule,
    Window,
    WindowRule,
    expand_expressions,
    explicit,
    resolve,
    resolve_parameters,
    tumbling,
)

RULES: TypeAdapter[WindowRule] = TypeAdapter(WindowRule)

# Zones whose clocks change in awkward ways, and two whose clocks never do.
CURATED_ZONES = (
    "UTC",
    "Asia/Kolkata",
    "America/New_York",
    "Europe/London",
    "Europe/Dublin",
    "Australia/Lord_Howe",
    "America/Havana",
    "Asia/Beirut",
    "America/Santiago",
    "America/St_Johns",
    "Pacific/Chatham",
    "Asia/Kathmandu",
)
ALL_ZONES = tuple(sorted(available_timezones()))
ALIGNS = ("none", "hour", "day", "week", "month")
FIRST_YEAR, LAST_YEAR = 2025, 2027
NEW_YORK = "America/New_York"


def rule(document: dict[str, Any]) -> WindowRule:
    return RULES.validate_python(document)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def naive(text: str) -> datetime:
    return datetime.fromisoformat(text)


def read(window: Window) -> tuple[datetime, datetime]:
    """The instants AMC reads from the fields the window sends."""
    bounds = Window.from_amc_fields(window.amc_fields()).utc_bounds()
    assert bounds is not None
    return bounds


def instant(local: datetime, name: str) -> datetime:
    """A wall-clock time read the way AMC reads it (java.time, ``fold=0``)."""
    return local.replace(tzinfo=ZoneInfo(name), fold=0).astimezone(UTC)


def wall(moment: datetime, name: str) -> datetime:
    return moment.astimezone(ZoneInfo(name)).replace(tzinfo=None)


def offset(local: datetime, name: str) -> timedelta:
    result = local.replace(tzinfo=ZoneInfo(name), fold=0).utcoffset()
    assert result is not None
    return result


@functools.cache
def transitions(name: str) -> tuple[datetime, ...]:
    """Every change of ``name``'s UTC offset in the years the tests draw from."""
    tz = ZoneInfo(name)

    def offset_at(seconds: int) -> timedelta | None:
        return datetime.fromtimestamp(seconds, UTC).astimezone(tz).utcoffset()

    found = []
    second = int(datetime(FIRST_YEAR, 1, 1, tzinfo=UTC).timestamp())
    stop = int(datetime(LAST_YEAR + 1, 1, 1, tzinfo=UTC).timestamp())
    while second < stop:
        following = second + 86400
        if offset_at(following) != offset_at(second):
            low, high = second, following
            while high - low > 1:
                middle = (low + high) // 2
                if offset_at(middle) == offset_at(low):
                    low = middle
                else:
                    high = middle

            found.append(datetime.fromtimestamp(high, UTC))

        second = following

    return tuple(found)


zones = st.one_of(st.sampled_from(CURATED_ZONES), st.sampled_from(ALL_ZONES))


@st.composite
def near_changes(draw: st.DrawFn, name: str) -> datetime:
    """An instant, usually within hours of a change of ``name``'s clocks."""
    changes = transitions(name)
    near = draw(st.integers(0, 3)) > 0
    if changes and near:
        anchor = draw(st.sampled_from(list(changes)))
        seconds = draw(
            st.one_of(st.integers(-3 * 3600, 3 * 3600), st.integers(-2 * 86400, 86400))
        )
    else:
        anchor = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC)
        seconds = draw(st.integers(0, (LAST_YEAR - FIRST_YEAR) * 365 * 86400))

    micro = draw(st.sampled_from([0, 0, 1, 999_999]))
    return anchor + timedelta(seconds=seconds, microseconds=micro)


whole_days = st.integers(1, 60).map(lambda n: timedelta(days=n))
hours = (
    st.one_of(st.integers(1, 72).map(lambda n: n * 60), st.integers(1, 10 * 24 * 60))
    .filter(lambda minutes: minutes % 1440)
    .map(lambda minutes: timedelta(minutes=minutes))
)
lags = st.one_of(
    st.just(DEFAULT_LAG),
    st.just(timedelta(0)),
    st.integers(0, 96 * 60).map(lambda minutes: timedelta(minutes=minutes)),
)


@st.composite
def relative_cases(
    draw: st.DrawFn, lengths: st.SearchStrategy[timedelta]
) -> tuple[RelativeWindowRule, datetime]:
    """A relative rule and a fire time that puts one of its bounds near a change."""
    name = draw(zones)
    last = draw(lengths)
    lag = draw(lags)
    align = draw(st.sampled_from(ALIGNS))
    available = draw(near_changes(name))
    if draw(st.booleans()):
        # Put the start, rather than the end, near the change.
        available += last

    relative = RelativeWindowRule(last=last, lag=lag, align=align, time_zone=name)
    return relative, available + lag


def is_aligned(local: datetime, align: str) -> bool:
    checks = {
        "none": local.microsecond == 0,
        "hour": local.minute == local.second == local.microsecond == 0,
    }
    checks["day"] = checks["hour"] and local.hour == 0
    checks["week"] = checks["day"] and local.weekday() == 0
    checks["month"] = checks["day"] and local.day == 1
    return checks[align]


def next_boundary(local: datetime, align: str) -> datetime:
    """The wall-clock boundary one ``align`` unit after the aligned ``local``."""
    if align == "hour":
        return local + timedelta(hours=1)

    if align == "day":
        return local + timedelta(days=1)

    if align == "week":
        return local + timedelta(days=7)

    index = local.year * 12 + local.month
    return local.replace(year=index // 12, month=index % 12 + 1)


def local_end(window: Window, name: str) -> datetime:
    """The end as a wall-clock time of the rule's zone, whatever zone it was sent in."""
    if window.time_zone == name:
        assert window.end is not None
        return window.end

    return wall(read(window)[1], name)


# AMC's own window types


@pytest.mark.parametrize("kind", AMC_WINDOW_TYPES)
def test_amc_window_types_pass_through(kind: str) -> None:
    """An AMC window type is sent as it is, with no bounds, for AMC to resolve."""
    parsed = rule({"type": kind})
    assert isinstance(parsed, AmcWindowRule)
    window = resolve(parsed, utc("2026-05-20T10:00:00"))
    assert window.amc_fields() == {"timeWindowType": kind}
    assert window.utc_bounds() is None
    assert window.describe() == kind


def test_amc_window_type_keeps_its_time_zone() -> None:
    """An AMC window type with a time zone sends the zone for AMC's day boundaries."""
    window = resolve(
        rule({"type": "MOST_RECENT_WEEK", "time_zone": NEW_YORK}),
        utc("2026-05-20T10:00:00"),
    )
    assert window.amc_fields() == {
        "timeWindowType": "MOST_RECENT_WEEK",
        "timeWindowTimeZone": NEW_YORK,
    }


@pytest.mark.parametrize(
    "document",
    [
        {"type": "most_recent_day"},
        {"type": "MOST RECENT"},
        {"type": "EXPLICIT"},
        {"type": "EXPLICIT", "start": "2026-05-20T00:00:00"},
        {"type": "MOST_RECENT_DAY", "start": "2026-05-20T00:00:00"},
        {"type": "MOST_RECENT_DAY", "time_zone": "Mars/Olympus_Mons"},
        {"last": "7d", "time_zone": "Mars/Olympus_Mons"},
        {"last": "0s"},
        {"last": "7d", "lag": "-1h"},
        {"last": "7d", "align": "year"},
        {"last": "7d", "every": "1d"},
    ],
)
def test_invalid_rules_are_rejected(document: dict[str, Any]) -> None:
    """Misspelt types, missing bounds, unknown zones and bad durations fail to load."""
    with pytest.raises(ValidationError):
        rule(document)


# Explicit windows


def test_explicit_window_with_fixed_bounds() -> None:
    """Fixed bounds are sent unchanged whenever the run is created."""
    parsed = rule(
        {
            "type": "EXPLICIT",
            "start": "2026-05-20T00:00:00",
            "end": "2026-05-27T00:00:00",
            "time_zone": NEW_YORK,
        }
    )
    assert isinstance(parsed, ExplicitWindowRule)
    for fired in ("2026-01-01T00:00:00", "2027-06-30T23:59:59"):
        assert resolve(parsed, utc(fired)).amc_fields() == {
            "timeWindowType": "EXPLICIT",
            "timeWindowStart": "2026-05-20T00:00:00",
            "timeWindowEnd": "2026-05-27T00:00:00",
            "timeWindowTimeZone": NEW_YORK,
        }


@pytest.mark.parametrize(
    ("bound", "expected"),
    [
        ("2026-05-20", "2026-05-20T00:00:00"),
        (" 2026-05-20T06:30:00 ", "2026-05-20T06:30:00"),
        (date(2026, 5, 20), "2026-05-20T00:00:00"),
        (datetime(2026, 5, 20, 6, 30), "2026-05-20T06:30:00"),
        ("today(-1)", "TODAY(-1)"),
        ("TODAY( +2 )", "TODAY( +2 )"),
        ("FirstDayOfOffsetMonth(-1)", "FIRSTDAYOFOFFSETMONTH(-1)"),
    ],
)
def test_explicit_bounds_accept_times_dates_and_expressions(
    bound: object, expected: str
) -> None:
    """AMC times, dates, YAML timestamps and date expressions are all bounds."""
    parsed = ExplicitWindowRule(type="EXPLICIT", start=bound, end="2030-01-01")
    assert parsed.start == expected
    assert parsed.time_zone == "UTC"


@pytest.mark.parametrize(
    "bound",
    [
        datetime(2026, 5, 20, tzinfo=UTC),
        "20/05/2026",
        "yesterday",
        "TODAY(-1",
        "TOMORROW(1)",
        20260520,
    ],
)
def test_explicit_bounds_reject_anything_else(bound: object) -> None:
    """Aware timestamps, other date spellings and unknown expressions fail to load."""
    with pytest.raises(ValidationError):
        ExplicitWindowRule(type="EXPLICIT", start=bound, end="2030-01-01")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-05-27T00:00:00", "2026-05-20T00:00:00"),
        ("2026-05-20T00:00:00", "2026-05-20T00:00:00"),
    ],
)
def test_explicit_fixed_bounds_must_be_ordered(start: str, end: str) -> None:
    """A fixed window whose start is not before its end fails to load."""
    with pytest.raises(ValidationError, match="start must be before end"):
        rule({"type": "EXPLICIT", "start": start, "end": end})


def test_explicit_expressions_resolve_in_the_windows_zone() -> None:
    """TODAY(n) is local midnight n days from the fire date in the window's zone."""
    fired = utc("2026-03-01T03:00:00")  # still 28 February in New York
    local = rule(
        {
            "type": "EXPLICIT",
            "start": "TODAY(-1)",
            "end": "TODAY(0)",
            "time_zone": NEW_YORK,
        }
    )
    assert resolve(local, fired).amc_fields() == {
        "timeWindowType": "EXPLICIT",
        "timeWindowStart": "2026-02-27T00:00:00",
        "timeWindowEnd": "2026-02-28T00:00:00",
        "timeWindowTimeZone": NEW_YORK,
    }
    in_utc = rule({"type": "EXPLICIT", "start": "TODAY(-1)", "end": "TODAY()"})
    window = resolve(in_utc, fired)
    assert (window.start, window.end) == (naive("2026-02-28"), naive("2026-03-01"))


def test_explicit_mixed_fixed_and_expression_bounds() -> None:
    """A fixed start with an expression end resolves the end at fire time."""
    parsed = rule({"type": "EXPLICIT", "start": "2026-01-01", "end": "TODAY(0)"})
    window = resolve(parsed, utc("2026-05-20T10:00:00"))
    assert (window.start, window.end) == (naive("2026-01-01"), naive("2026-05-20"))


def test_explicit_expression_window_empty_at_fire_time() -> None:
    """Expressions that give an empty window at fire time raise, naming the window."""
    parsed = rule({"type": "EXPLICIT", "start": "2026-06-01", "end": "TODAY(0)"})
    assert resolve(parsed, utc("2026-06-02T00:00:00")).start == naive("2026-06-01")
    with pytest.raises(ValueError, match="is empty"):
        resolve(parsed, utc("2026-06-01T12:00:00"))


def test_resolve_needs_an_aware_fire_time() -> None:
    """A naive fire time is refused rather than read in the machine's zone."""
    with pytest.raises(ValueError, match="aware"):
        resolve(rule({"last": "1d"}), datetime(2026, 5, 20))


@pytest.mark.parametrize(
    ("expression", "fired", "expected"),
    [
        ("TODAY(0)", "2026-03-15T12:00:00", "2026-03-15T00:00:00"),
        ("TODAY(-1)", "2026-03-01T00:00:00", "2026-02-28T00:00:00"),
        ("TODAY(1)", "2028-02-28T23:59:59", "2028-02-29T00:00:00"),
        ("TODAY(-366)", "2026-03-15T00:00:00", "2025-03-14T00:00:00"),
        ("FIRSTDAYOFOFFSETMONTH(0)", "2026-03-15T12:00:00", "2026-03-01T00:00:00"),
        ("FIRSTDAYOFOFFSETMONTH(-1)", "2026-03-15T12:00:00", "2026-02-01T00:00:00"),
        ("FIRSTDAYOFOFFSETMONTH(-3)", "2026-03-15T12:00:00", "2025-12-01T00:00:00"),
        ("FIRSTDAYOFOFFSETMONTH(10)", "2026-03-15T12:00:00", "2027-01-01T00:00:00"),
        ("LASTDAYOFOFFSETMONTH(0)", "2026-03-15T12:00:00", "2026-03-31T00:00:00"),
        ("LASTDAYOFOFFSETMONTH(-1)", "2026-03-15T12:00:00", "2026-02-28T00:00:00"),
        ("LASTDAYOFOFFSETMONTH(-1)", "2028-03-10T12:00:00", "2028-02-29T00:00:00"),
        ("LASTDAYOFOFFSETMONTH(-13)", "2026-03-15T12:00:00", "2025-02-28T00:00:00"),
        ("LASTDAYOFOFFSETMONTH(+9)", "2026-03-15T12:00:00", "2026-12-31T00:00:00"),
    ],
)
def test_date_expressions(expression: str, fired: str, expected: str) -> None:
    """Each expression gives local midnight of the day it names."""
    assert expand_expressions(expression, utc(fired), "UTC") == expected


def test_expressions_inside_text() -> None:
    """Every expression in a text is expanded; other words are left alone."""
    text = "BETWEEN 'today(-7)' AND 'TODAY(0)' -- not XTODAY(1) nor TODAY(x)"
    assert expand_expressions(text, utc("2026-05-20T10:00:00"), "UTC") == (
        "BETWEEN '2026-05-13T00:00:00' AND '2026-05-20T00:00:00'"
        " -- not XTODAY(1) nor TODAY(x)"
    )


def test_resolve_parameters_expands_strings_recursively() -> None:
    """Strings in nested lists and maps are expanded; other values and keys stay."""
    parameters: dict[str, Any] = {
        "since": "FIRSTDAYOFOFFSETMONTH(-1)",
        "days": ["TODAY(-2)", "TODAY(-1)", 7],
        "nested": {"TODAY(0)": {"until": "LASTDAYOFOFFSETMONTH(-1)"}},
        "flag": True,
        "none": None,
        "plain": "campaign_a",
    }
    resolved = resolve_parameters(parameters, utc("2026-03-02T01:00:00"), NEW_YORK)
    assert resolved == {
        "since": "2026-02-01T00:00:00",
        "days": ["2026-02-27T00:00:00", "2026-02-28T00:00:00", 7],
        "nested": {"TODAY(0)": {"until": "2026-02-28T00:00:00"}},
        "flag": True,
        "none": None,
        "plain": "campaign_a",
    }
    assert parameters["days"][0] == "TODAY(-2)"


@settings(max_examples=150, deadline=None)
@given(
    fired=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2037, 12, 31),
        timezones=st.just(UTC),
    ),
    name=st.sampled_from(CURATED_ZONES),
    months=st.integers(-30, 30),
    days=st.integers(-400, 400),
)
def test_expression_properties(
    fired: datetime, name: str, months: int, days: int
) -> None:
    """Month expressions bracket whole months; TODAY(n) is n local days from today."""
    today = wall(fired, name).replace(hour=0, minute=0, second=0, microsecond=0)

    def day(expression: str) -> datetime:
        return naive(expand_expressions(expression, fired, name))

    assert day(f"TODAY({days})") - day("TODAY(0)") == timedelta(days=days)
    assert day("TODAY(0)") == today
    first, last = (
        day(f"FIRSTDAYOFOFFSETMONTH({months})"),
        day(f"LASTDAYOFOFFSETMONTH({months})"),
    )
    assert first.day == 1
    assert (first.year * 12 + first.month) - (today.year * 12 + today.month) == months
    assert (last.year, last.month) == (first.year, first.month)
    assert last + timedelta(days=1) == day(f"FIRSTDAYOFOFFSETMONTH({months + 1})")


# Relative windows: examples


def test_relative_defaults() -> None:
    """A bare ``last`` ends two days back at UTC midnight and counts back from there."""
    parsed = rule({"last": "7d"})
    assert isinstance(parsed, RelativeWindowRule)
    assert (parsed.lag, parsed.align, parsed.time_zone) == (DEFAULT_LAG, "day", "UTC")
    window = resolve(parsed, utc("2026-05-20T10:00:00"))
    assert window.amc_fields() == {
        "timeWindowType": "EXPLICIT",
        "timeWindowStart": "2026-05-11T00:00:00",
        "timeWindowEnd": "2026-05-18T00:00:00",
        "timeWindowTimeZone": "UTC",
    }


@pytest.mark.parametrize(
    ("document", "start", "end"),
    [
        (
            {"last": "90m", "lag": "0s", "align": "none"},
            "2026-05-20T08:40:07",
            "2026-05-20T10:10:07",
        ),
        (
            {"last": "3h", "lag": "1h", "align": "hour"},
            "2026-05-20T06:00:00",
            "2026-05-20T09:00:00",
        ),
        (
            {"last": "1w", "lag": "0s", "align": "week"},
            "2026-05-11T00:00:00",
            "2026-05-18T00:00:00",
        ),
        (
            {"last": "31d", "lag": "2d", "align": "month"},
            "2026-03-31T00:00:00",
            "2026-05-01T00:00:00",
        ),
        (
            {"last": "1d", "lag": "0s", "time_zone": NEW_YORK},
            "2026-05-19T00:00:00",
            "2026-05-20T00:00:00",
        ),
        (
            {"last": "1d", "lag": "0s", "time_zone": "Asia/Kolkata", "align": "hour"},
            "2026-05-19T15:00:00",
            "2026-05-20T15:00:00",
        ),
    ],
)
def test_relative_window_examples(
    document: dict[str, Any], start: str, end: str
) -> None:
    """Alignment, lag and zone put the bounds where an operator expects them."""
    window = resolve(rule(document), utc("2026-05-20T10:10:07.5"))
    assert (window.start, window.end) == (naive(start), naive(end))
    assert window.time_zone == document.get("time_zone", "UTC")


@pytest.mark.parametrize(
    ("name", "day", "length"),
    [
        (NEW_YORK, "2026-03-08", timedelta(hours=23)),
        (NEW_YORK, "2026-11-01", timedelta(hours=25)),
        (NEW_YORK, "2026-11-02", timedelta(hours=24)),
        ("Europe/London", "2026-03-29", timedelta(hours=23)),
        ("Europe/London", "2026-10-25", timedelta(hours=25)),
        ("Australia/Lord_Howe", "2026-10-04", timedelta(hours=23, minutes=30)),
        ("Australia/Lord_Howe", "2026-04-05", timedelta(hours=24, minutes=30)),
        ("America/Havana", "2026-03-07", timedelta(hours=24)),
        ("America/Havana", "2026-03-08", timedelta(hours=23)),
        ("America/Havana", "2026-11-01", timedelta(hours=25)),
        ("Asia/Beirut", "2026-03-29", timedelta(hours=23)),
        ("Asia/Beirut", "2026-10-24", timedelta(hours=25)),
        ("Asia/Kolkata", "2026-03-29", timedelta(hours=24)),
    ],
)
def test_one_day_window_across_a_clock_change(
    name: str, day: str, length: timedelta
) -> None:
    """A one-day window is the local calendar day: 23 or 25 real hours on a change."""
    local_day = naive(day)
    following = local_day + timedelta(days=1)
    fired = instant(following, name) + timedelta(hours=5)
    window = resolve(
        rule({"last": "1d", "lag": "5h", "align": "day", "time_zone": name}), fired
    )
    assert (window.start, window.end, window.time_zone) == (local_day, following, name)
    start, end = read(window)
    assert end - start == length


def test_day_window_starting_at_a_skipped_midnight() -> None:
    """Havana skips midnight on 8 March: the day is read from 01:00, its first hour."""
    window = explicit(naive("2026-03-08"), naive("2026-03-09"), "America/Havana")
    assert read(window) == (utc("2026-03-08T05:00:00"), utc("2026-03-09T04:00:00"))
    assert window.amc_fields()["timeWindowStart"] == "2026-03-08T00:00:00"


def test_hour_window_ending_at_a_repeated_midnight() -> None:
    """Havana repeats midnight on 1 November: a day ends at the first of the two."""
    fired = utc("2026-11-01T05:30:00")  # 00:30, second pass
    window = resolve(
        rule({"last": "6h", "lag": "0s", "time_zone": "America/Havana"}), fired
    )
    assert (window.start, window.end) == (
        naive("2026-10-31T18:00"),
        naive("2026-11-01"),
    )
    assert window.utc_bounds() == read(window)
    assert read(window) == (utc("2026-10-31T22:00:00"), utc("2026-11-01T04:00:00"))


def test_hourly_windows_through_the_repeated_hour() -> None:
    """Hourly windows through New York's repeated 01:00 tile it, one real hour each."""
    relative = rule({"last": "1h", "lag": "0s", "align": "hour", "time_zone": NEW_YORK})
    windows = [
        resolve(relative, utc(f"2026-11-01T{hour:02}:30:00")) for hour in range(3, 10)
    ]
    bounds = [read(window) for window in windows]
    assert [end - start for start, end in bounds] == [timedelta(hours=1)] * 7
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    # The repeated hour's second pass has no wall-clock name in New York.
    assert [w.time_zone for w in windows].count("UTC") == 2
    assert windows[3].amc_fields() == {
        "timeWindowType": "EXPLICIT",
        "timeWindowStart": "2026-11-01T05:00:00",
        "timeWindowEnd": "2026-11-01T06:00:00",
        "timeWindowTimeZone": "UTC",
    }


def test_hour_window_over_the_repeated_hour_keeps_its_length() -> None:
    """A two-hour window ending in the repeated hour is read as two real hours."""
    relative = rule({"last": "2h", "lag": "0s", "align": "none", "time_zone": NEW_YORK})
    fired = utc("2026-11-01T06:30:00")  # 01:30 EST, the second 01:30
    assert read(resolve(relative, fired)) == (
        utc("2026-11-01T04:30:00"),
        utc("2026-11-01T06:30:00"),
    )


def test_hour_window_over_the_skipped_hour() -> None:
    """Across the skipped hour a three-hour window spans four wall-clock hours."""
    relative = rule({"last": "3h", "lag": "0s", "align": "hour", "time_zone": NEW_YORK})
    window = resolve(relative, utc("2026-03-08T08:10:00"))  # 04:10 EDT
    assert (window.start, window.end) == (
        naive("2026-03-08T00:00"),
        naive("2026-03-08T04:00"),
    )
    assert read(window)[1] - read(window)[0] == timedelta(hours=3)


def test_whole_day_window_ending_in_the_repeated_hour() -> None:
    """A whole-day window ending in the second 01:00 hour is sent in UTC, 25 hours."""
    relative = rule({"last": "1d", "lag": "0s", "align": "hour", "time_zone": NEW_YORK})
    window = resolve(relative, utc("2026-11-01T06:30:00"))  # 01:30 EST
    assert window.amc_fields() == {
        "timeWindowType": "EXPLICIT",
        "timeWindowStart": "2026-10-31T05:00:00",
        "timeWindowEnd": "2026-11-01T06:00:00",
        "timeWindowTimeZone": "UTC",
    }
    first_pass = resolve(relative, utc("2026-11-01T05:30:00"))  # 01:30 EDT
    assert (first_pass.start, first_pass.end) == (
        naive("2026-10-31T01:00"),
        naive("2026-11-01T01:00"),
    )
    assert first_pass.time_zone == NEW_YORK


def test_whole_day_window_to_the_second_moves_on_through_the_repeated_hour() -> None:
    """Unaligned, a one-day window's end keeps pace with the clock as it goes back."""
    relative = rule({"last": "1d", "lag": "0s", "align": "none", "time_zone": NEW_YORK})
    fires = [utc("2026-11-01T05:59:59"), utc("2026-11-01T06:00:00")]
    assert [read(resolve(relative, fired))[1] for fired in fires] == fires
    assert [read(resolve(relative, fired))[0] for fired in fires] == [
        utc("2026-10-31T05:59:59"),
        utc("2026-10-31T05:00:00"),
    ]


def test_hour_windows_where_the_clocks_change_by_part_of_an_hour() -> None:
    """Chatham's clocks change at 02:45; hourly windows still tile in real hours."""
    relative = rule(
        {"last": "1h", "lag": "0s", "align": "hour", "time_zone": "Pacific/Chatham"}
    )
    for change in ("2025-09-27T14:00:00", "2025-04-05T14:00:00"):
        fires = [utc(change) + timedelta(minutes=m) for m in range(-60, 75, 5)]
        read_at = [read(resolve(relative, fired)) for fired in fires]
        assert all(end <= fired for fired, (_, end) in zip(fires, read_at, strict=True))
        assert read_at == sorted(read_at)
        bounds = sorted(set(read_at))
        assert all(end - start == timedelta(hours=1) for start, end in bounds)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


# Relative windows: properties


@settings(max_examples=120, deadline=None)
@given(case=st.one_of(relative_cases(whole_days), relative_cases(hours)))
def test_relative_window_has_ended_by_fire_time_minus_lag(
    case: tuple[RelativeWindowRule, datetime],
) -> None:
    """The window AMC reads is non-empty and ends no later than fire time minus lag."""
    relative, fired = case
    window = resolve(relative, fired)
    start, end = read(window)
    assert start < end <= fired - relative.lag
    assert window.utc_bounds() == (start, end)
    assert window.type == "EXPLICIT"


@settings(max_examples=120, deadline=None)
@given(case=st.one_of(relative_cases(whole_days), relative_cases(hours)))
def test_relative_window_end_is_aligned_in_local_time(
    case: tuple[RelativeWindowRule, datetime],
) -> None:
    """The end falls on a boundary of the align unit on the rule zone's clock."""
    relative, fired = case
    assert is_aligned(
        local_end(resolve(relative, fired), relative.time_zone), relative.align
    )


@settings(max_examples=120, deadline=None)
@given(case=relative_cases(whole_days))
def test_whole_day_window_counts_local_calendar_days(
    case: tuple[RelativeWindowRule, datetime],
) -> None:
    """The start is ``last`` local calendar days before the end, never shifted."""
    relative, fired = case
    name = relative.time_zone
    window = resolve(relative, fired)
    start, end = read(window)
    assert start == instant(local_end(window, name) - relative.last, name)
    if window.time_zone == name:
        assert window.end is not None
        assert window.start == window.end - relative.last

    if name in CURATED_ZONES:
        assert abs(end - start - relative.last) <= timedelta(hours=1)


@settings(max_examples=120, deadline=None)
@given(case=relative_cases(hours))
def test_hour_window_is_exactly_its_length(
    case: tuple[RelativeWindowRule, datetime],
) -> None:
    """A window measured in hours is that many real hours, across any clock change."""
    relative, fired = case
    start, end = read(resolve(relative, fired))
    assert end - start == relative.last


@settings(max_examples=120, deadline=None)
@given(case=st.one_of(relative_cases(whole_days), relative_cases(hours)))
def test_relative_window_is_the_latest_aligned_one(
    case: tuple[RelativeWindowRule, datetime],
) -> None:
    """No later aligned instant has passed by fire time minus lag."""
    relative, fired = case
    name = relative.time_zone
    window = resolve(relative, fired)
    end = read(window)[1]
    available = fired - relative.lag
    if relative.align == "none":
        assert available - end < timedelta(seconds=1)
    elif relative.align == "hour":
        # Offsets are whole quarter hours: local hours start on a quarter hour.
        steps = math.floor((available - end) / timedelta(minutes=15))
        for step in range(1, steps + 1):
            later = wall(end + step * timedelta(minutes=15), name)
            assert not is_aligned(later, "hour"), later
    else:
        following = next_boundary(local_end(window, name), relative.align)
        assert available < instant(following, name)


@settings(max_examples=100, deadline=None)
@given(
    case=st.one_of(relative_cases(whole_days), relative_cases(hours)),
    later=st.integers(0, 6 * 3600).map(lambda s: timedelta(seconds=s)),
)
def test_relative_window_never_moves_back(
    case: tuple[RelativeWindowRule, datetime], later: timedelta
) -> None:
    """A later fire time never gives a window that ends earlier."""
    relative, fired = case
    assert (
        read(resolve(relative, fired))[1] <= read(resolve(relative, fired + later))[1]
    )


# Explicit and tumbling windows


def test_explicit_drops_microseconds_and_checks_order() -> None:
    """explicit() sends whole seconds and refuses an empty or reversed window."""
    window = explicit(naive("2026-05-20T00:00:00.750"), naive("2026-05-21T00:00:00.1"))
    assert (window.start, window.end) == (naive("2026-05-20"), naive("2026-05-21"))
    assert window.time_zone == "UTC"
    with pytest.raises(ValueError, match="before"):
        explicit(naive("2026-05-21"), naive("2026-05-20"))

    with pytest.raises(ValueError, match="time zone"):
        explicit(naive("2026-05-20"), naive("2026-05-21"), "Nowhere/Special")


def test_window_fields_round_trip() -> None:
    """amc_fields and from_amc_fields are inverses; describe names bounds and zone."""
    window = explicit(naive("2026-03-08"), naive("2026-03-09"), NEW_YORK)
    fields = window.amc_fields()
    assert fields == {
        "timeWindowType": "EXPLICIT",
        "timeWindowStart": "2026-03-08T00:00:00",
        "timeWindowEnd": "2026-03-09T00:00:00",
        "timeWindowTimeZone": NEW_YORK,
    }
    assert Window.from_amc_fields(fields) == window
    assert window.describe() == "2026-03-08T00:00:00 to 2026-03-09T00:00:00 " + NEW_YORK


def test_from_amc_fields_defaults() -> None:
    """Missing fields read as AMC's defaults: MOST_RECENT_DAY, no bounds, UTC bounds."""
    assert Window.from_amc_fields({}) == Window("MOST_RECENT_DAY")
    bare = Window.from_amc_fields(
        {
            "timeWindowType": "EXPLICIT",
            "timeWindowStart": "2026-05-20T00:00:00",
            "timeWindowEnd": "2026-05-21T00:00:00",
        }
    )
    assert bare.time_zone is None
    assert bare.utc_bounds() == (utc("2026-05-20T00:00:00"), utc("2026-05-21T00:00:00"))
    assert bare.describe().endswith(" UTC")
    assert "timeWindowTimeZone" not in bare.amc_fields()


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-03-08T00:00:00", "2026-03-08T05:00:00"),
        ("2026-03-08T02:30:00", "2026-03-08T07:30:00"),  # skipped: moves forward
        ("2026-03-08T03:00:00", "2026-03-08T07:00:00"),
        ("2026-11-01T01:30:00", "2026-11-01T05:30:00"),  # repeated: the first pass
        ("2026-11-01T02:00:00", "2026-11-01T07:00:00"),
    ],
)
def test_utc_bounds_read_wall_clock_times_as_amc_does(
    local: str, expected: str
) -> None:
    """Skipped times move forward by the gap; repeated times are their first pass."""
    start = naive(local)
    window = Window("EXPLICIT", start, start + timedelta(days=1), NEW_YORK)
    bounds = window.utc_bounds()
    assert bounds is not None
    assert bounds[0] == utc(expected)


def test_utc_bounds_ignore_a_fold_left_on_the_bounds() -> None:
    """A bound carrying fold=1 reads as AMC reads its text: the first pass."""
    window = Window(
        "EXPLICIT",
        datetime(2026, 11, 1, 1, 30, fold=1),
        datetime(2026, 11, 1, 3),
        NEW_YORK,
    )
    assert window.utc_bounds() == read(window)


def test_tumbling_days_with_a_short_last_window() -> None:
    """Daily windows from start to end, the last one cut at the end."""
    windows = list(
        tumbling(naive("2026-05-01"), naive("2026-05-04T12:00"), timedelta(days=1))
    )
    assert [(w.start, w.end) for w in windows] == [
        (naive("2026-05-01"), naive("2026-05-02")),
        (naive("2026-05-02"), naive("2026-05-03")),
        (naive("2026-05-03"), naive("2026-05-04")),
        (naive("2026-05-04"), naive("2026-05-04T12:00")),
    ]


def test_tumbling_weeks_follow_the_local_calendar() -> None:
    """Weekly windows stay seven local days when the clocks change inside one."""
    windows = list(
        tumbling(naive("2026-03-02"), naive("2026-03-16"), timedelta(days=7), NEW_YORK)
    )
    assert [(w.start, w.end) for w in windows] == [
        (naive("2026-03-02"), naive("2026-03-09")),
        (naive("2026-03-09"), naive("2026-03-16")),
    ]
    first, second = (read(w) for w in windows)
    assert first[1] - first[0] == timedelta(days=7, hours=-1)
    assert second[1] - second[0] == timedelta(days=7)


@pytest.mark.parametrize(
    ("day", "count"), [("2026-03-08", 23), ("2026-11-01", 25), ("2026-11-02", 24)]
)
def test_tumbling_hours_across_a_clock_change(day: str, count: int) -> None:
    """Hourly windows over a local day are one real hour each, 23 or 25 of them."""
    start = naive(day)
    windows = list(
        tumbling(start, start + timedelta(days=1), timedelta(hours=1), NEW_YORK)
    )
    bounds = [read(w) for w in windows]
    assert len(windows) == count
    assert all(end - begin == timedelta(hours=1) for begin, end in bounds)
    assert bounds[0][0] == instant(start, NEW_YORK)
    assert bounds[-1][1] == instant(start + timedelta(days=1), NEW_YORK)


@pytest.mark.parametrize(
    ("start", "end", "step", "message"),
    [
        ("2026-05-01", "2026-05-02", timedelta(0), "positive"),
        ("2026-05-01", "2026-05-02", timedelta(hours=-1), "positive"),
        ("2026-05-02", "2026-05-01", timedelta(days=1), "before"),
        ("2026-05-01", "2026-05-01", timedelta(days=1), "before"),
    ],
)
def test_tumbling_rejects_bad_ranges(
    start: str, end: str, step: timedelta, message: str
) -> None:
    """A step that is not positive, or an empty range, is a ValueError."""
    with pytest.raises(ValueError, match=message):
        list(tumbling(naive(start), naive(end), step))


steps = st.one_of(
    st.integers(1, 10).map(lambda n: timedelta(days=n)),
    st.integers(1, 30 * 60)
    .filter(lambda minutes: minutes % 1440)
    .map(lambda minutes: timedelta(minutes=minutes)),
)


@settings(max_examples=120, deadline=None)
@given(data=st.data(), name=zones, step=steps)
def test_tumbling_windows_tile_the_range(
    data: st.DataObject, name: str, step: timedelta
) -> None:
    """Tumbling windows cover the range as AMC reads it, with no gap or overlap."""
    start = wall(data.draw(near_changes(name)), name).replace(microsecond=0, fold=0)
    span = data.draw(st.integers(1, 40)) * step + data.draw(
        st.sampled_from([timedelta(0), -step / 3, step / 2])
    )
    end = start + span
    assume(instant(start, name) < instant(end, name))
    windows = list(tumbling(start, end, step, name))
    bounds = [read(w) for w in windows]
    assert bounds[0][0] == instant(start, name)
    assert bounds[-1][1] == instant(end, name)
    assert all(begin < finish for begin, finish in bounds)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    if step.total_seconds() % 86400 == 0:
        assert all(w.time_zone == name for w in windows)
        assert windows[0].start == start
        assert all(
            w.start is not None and w.end is not None and w.end - w.start == step
            for w in windows[:-1]
        )
        assert windows[-1].end == end
        assert len(windows) == math.ceil(span / step)
    else:
        assert all(finish - begin == step for begin, finish in bounds[:-1])
        assert bounds[-1][1] - bounds[-1][0] <= step
