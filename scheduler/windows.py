"""Time-window rules of a job, and the concrete AMC window fields they resolve to.

A rule is one of:

* an AMC window type passed through (``{type: MOST_RECENT_DAY}``);
* an explicit window (``{type: EXPLICIT, start: ..., end: ..., time_zone: ...}``)
  whose bounds are AMC times or date expressions such as ``TODAY(-1)``;
* a relative window (``{last: 7d, lag: 2d, align: day, time_zone: ...}``)
  resolved against the moment a run is created.

AMC reads ``timeWindowStart`` and ``timeWindowEnd`` as local times in
``timeWindowTimeZone``, and the end behaves as exclusive, so every window
here is half-open: ``[start, end)``.

A wall-clock time names one instant the way java.time reads it: a time
repeated when the clocks go back is its first occurrence, and a time the
clocks skip moves forward by the gap (Python's ``fold=0`` gives the same
instants). Whole-day windows count local calendar days, so a day across a
daylight-saving change is 23 or 25 hours long; windows measured in hours
are real hours. A bound in the second pass through a repeated hour has no
wall-clock name in its zone, so such a window is given in UTC instead.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Tag,
    field_validator,
    model_validator,
)

from .durations import NonNegativeDuration, PositiveDuration

AMC_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
AMC_WINDOW_TYPES = (
    "MOST_RECENT_DAY",
    "MOST_RECENT_WEEK",
    "CURRENT_MONTH",
    "PREVIOUS_MONTH",
    "ALL",
)
DEFAULT_LAG = timedelta(hours=48)
MAX_REACH = timedelta(days=400)

_EXPRESSION = re.compile(
    r"\b(TODAY|FIRSTDAYOFOFFSETMONTH|LASTDAYOFOFFSETMONTH)\(\s*([+-]?\d+)?\s*\)",
    re.IGNORECASE,
)
_WINDOW_TYPE = re.compile(r"[A-Z][A-Z_]*")
_UTC = ZoneInfo("UTC")


def zone(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; ValueError when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise ValueError(f"unknown IANA time zone {name!r}") from None


def _check_zone(name: object) -> str:
    if not isinstance(name, str):
        raise ValueError("expected an IANA time zone name such as Europe/London")

    zone(name)
    return name


TimeZoneName = Annotated[str, BeforeValidator(_check_zone)]


def parse_amc_time(text: str) -> datetime:
    """A naive datetime from AMC's ``yyyy-MM-ddTHH:mm:ss``."""
    return datetime.strptime(text, AMC_TIME_FORMAT)


def format_amc_time(moment: datetime) -> str:
    return moment.strftime(AMC_TIME_FORMAT)


def _coerce_bound(value: object) -> str:
    """Accept AMC times, dates, YAML timestamps and date expressions."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise ValueError("give the time without an offset; set time_zone instead")

        return format_amc_time(value)

    if isinstance(value, date):
        return format_amc_time(datetime.combine(value, datetime.min.time()))

    if not isinstance(value, str):
        raise ValueError("expected a time such as 2026-05-20T00:00:00 or TODAY(-1)")

    text = value.strip()
    if _EXPRESSION.fullmatch(text):
        return text.upper()

    for fmt in (AMC_TIME_FORMAT, "%Y-%m-%d"):
        try:
            return format_amc_time(datetime.strptime(text, fmt))
        except ValueError:
            continue

    raise ValueError(
        f"invalid time {value!r}: expected yyyy-MM-ddTHH:mm:ss, a date, "
        "or TODAY(n), FIRSTDAYOFOFFSETMONTH(n), LASTDAYOFOFFSETMONTH(n)"
    )


WindowBound = Annotated[str, BeforeValidator(_coerce_bound)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AmcWindowRule(_Rule):
    """One of AMC's own window types, resolved by AMC itself."""

    type: str
    time_zone: TimeZoneName | None = None

    @field_validator("type")
    @classmethod
    def _known_shape(cls, value: str) -> str:
        if value == "EXPLICIT" or not _WINDOW_TYPE.fullmatch(value):
            raise ValueError(
                f"invalid window type {value!r} (AMC types: "
                f"{', '.join(AMC_WINDOW_TYPES)}, or EXPLICIT with start and end)"
            )

        return value


class ExplicitWindowRule(_Rule):
    """Fixed bounds, or bounds computed from date expressions."""

    type: Literal["EXPLICIT"]
    start: WindowBound
    end: WindowBound
    time_zone: TimeZoneName = "UTC"

    @model_validator(mode="after")
    def _ordered(self) -> ExplicitWindowRule:
        computed = _EXPRESSION.fullmatch(self.start) or _EXPRESSION.fullmatch(self.end)
        if not computed and parse_amc_time(self.start) >= parse_amc_time(self.end):
            raise ValueError("start must be before end")

        return self


class RelativeWindowRule(_Rule):
    """The last ``last`` of data that ended ``lag`` ago, aligned to ``align``."""

    last: PositiveDuration
    lag: NonNegativeDuration = DEFAULT_LAG
    align: Literal["none", "hour", "day", "week", "month"] = "day"
    time_zone: TimeZoneName = "UTC"

    @field_validator("last", "lag")
    @classmethod
    def _within_retention(cls, value: timedelta) -> timedelta:
        # AMC holds 13 months of events: a longer reach is always a mistake.
        if value > MAX_REACH:
            raise ValueError("must not exceed 400 days (AMC keeps 13 months)")

        return value


def _rule_kind(value: Any) -> str:
    if isinstance(value, Mapping):
        if "last" in value:
            return "relative"

        if value.get("type") == "EXPLICIT":
            return "explicit"

        return "amc"

    if isinstance(value, RelativeWindowRule):
        return "relative"

    if isinstance(value, ExplicitWindowRule):
        return "explicit"

    return "amc"


WindowRule = Annotated[
    Annotated[AmcWindowRule, Tag("amc")]
    | Annotated[ExplicitWindowRule, Tag("explicit")]
    | Annotated[RelativeWindowRule, Tag("relative")],
    Discriminator(_rule_kind),
]


@dataclass(frozen=True)
class Window:
    """A concrete window as AMC receives it. ``start``/``end`` are local, naive."""

    type: str
    start: datetime | None = None
    end: datetime | None = None
    time_zone: str | None = None

    def amc_fields(self) -> dict[str, str]:
        fields = {"timeWindowType": self.type}
        if self.start is not None and self.end is not None:
            fields["timeWindowStart"] = format_amc_time(self.start)
            fields["timeWindowEnd"] = format_amc_time(self.end)

        if self.time_zone is not None:
            fields["timeWindowTimeZone"] = self.time_zone

        return fields

    @classmethod
    def from_amc_fields(cls, fields: Mapping[str, Any]) -> Window:
        start = fields.get("timeWindowStart")
        end = fields.get("timeWindowEnd")
        return cls(
            type=str(fields.get("timeWindowType") or "MOST_RECENT_DAY"),
            start=parse_amc_time(start) if start else None,
            end=parse_amc_time(end) if end else None,
            time_zone=fields.get("timeWindowTimeZone"),
        )

    def utc_bounds(self) -> tuple[datetime, datetime] | None:
        """The window's bounds as aware UTC instants, when it has bounds."""
        if self.start is None or self.end is None:
            return None

        tz = zone(self.time_zone or "UTC")
        return _instant(self.start, tz), _instant(self.end, tz)

    def describe(self) -> str:
        if self.start is None or self.end is None:
            return self.type

        return (
            f"{format_amc_time(self.start)} to {format_amc_time(self.end)}"
            f" {self.time_zone or 'UTC'}"
        )


def _month_start(year: int, month: int, offset: int) -> date:
    index = year * 12 + (month - 1) + offset
    return date(index // 12, index % 12 + 1, 1)


def _expression_date(name: str, offset: int, today: date) -> date:
    if name == "TODAY":
        return today + timedelta(days=offset)

    first = _month_start(today.year, today.month, offset)
    if name == "FIRSTDAYOFOFFSETMONTH":
        return first

    last_day = calendar.monthrange(first.year, first.month)[1]
    return first.replace(day=last_day)


def expand_expressions(text: str, at: datetime, time_zone: str) -> str:
    """Replace every date expression in ``text`` by its AMC time at ``at``.

    ``TODAY(-1)`` is yesterday at midnight in ``time_zone``;
    ``FIRSTDAYOFOFFSETMONTH(-1)`` and ``LASTDAYOFOFFSETMONTH(-1)`` are the first
    and last day of last month, also at midnight.
    """
    today = at.astimezone(zone(time_zone)).date()

    def replace(match: re.Match[str]) -> str:
        try:
            day = _expression_date(
                match.group(1).upper(), int(match.group(2) or 0), today
            )
        except (OverflowError, ValueError):
            raise ValueError(f"{match.group(0)} is out of range") from None

        return format_amc_time(datetime.combine(day, datetime.min.time()))

    return _EXPRESSION.sub(replace, text)


def resolve_parameters(
    parameters: Mapping[str, Any], at: datetime, time_zone: str
) -> dict[str, Any]:
    """Parameter values with their date expressions expanded, recursively."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return expand_expressions(value, at, time_zone)

        if isinstance(value, list):
            return [walk(item) for item in value]

        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}

        return value

    return {key: walk(value) for key, value in parameters.items()}


def _local(instant: datetime, tz: ZoneInfo) -> datetime:
    """The naive wall-clock time of an aware instant; ``fold`` marks a repeat."""
    return instant.astimezone(tz).replace(tzinfo=None)


def _instant(local: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant AMC reads for the wall-clock time ``local`` in ``tz``."""
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _align_down(moment: datetime, align: str) -> datetime:
    moment = moment.replace(microsecond=0)
    if align == "none":
        return moment

    moment = moment.replace(minute=0, second=0)
    if align == "hour":
        return moment

    # A day starts at the first occurrence of its midnight.
    moment = moment.replace(hour=0, fold=0)
    if align == "day":
        return moment

    if align == "week":
        return moment - timedelta(days=moment.weekday())

    return moment.replace(day=1)


def _hour_end(available: datetime, tz: ZoneInfo) -> datetime:
    """The last whole hour the local clock showed at or before ``available``.

    A naive local time, ``fold=1`` on the second pass of a repeated hour.
    Where the offset changes by part of an hour (Chatham's 02:45), a whole
    hour can lie inside the skipped or the repeated stretch, so each offset
    in force lately is tried. An hour counts where the clock showed it, or
    where AMC reads it as the moment the clock skipped it (Lord Howe's 02:00).
    """
    found: list[tuple[datetime, datetime]] = []
    for moment in (available, available - timedelta(hours=3)):
        offset = moment.astimezone(tz).utcoffset() or timedelta(0)
        hour = (available + offset).replace(
            tzinfo=None, minute=0, second=0, microsecond=0
        )
        at = (hour - offset).replace(tzinfo=UTC)
        shown = _local(at, tz)
        if shown == hour:
            found.append((at, shown))
        elif _instant(hour, tz) == at:
            found.append((at, hour))

    if not found:
        return _hour_end(available - timedelta(hours=1), tz)

    return max(found)[1]


def _align_end(available: datetime, align: str, tz: ZoneInfo) -> datetime:
    """The latest ``align`` boundary of the local clock at or before ``available``."""
    if align == "hour":
        return _hour_end(available, tz)

    end = _align_down(_local(available, tz), align)
    # A boundary inside a skipped stretch reads later than it: take the one before.
    while _instant(end, tz) > available:
        end = _align_down(end - timedelta(seconds=1), align)

    return end


def _is_whole_days(delta: timedelta) -> bool:
    return delta.total_seconds() % 86400 == 0


def _real_window(
    start: datetime,
    end: datetime,
    start_at: datetime,
    end_at: datetime,
    time_zone: str,
) -> Window:
    """The window written ``start`` to ``end``, meant as ``start_at`` to ``end_at``.

    In UTC when AMC would read a bound as another instant: the second pass
    through a repeated hour has the same wall-clock time as the first.
    """
    tz = zone(time_zone)
    if _instant(start, tz) == start_at and _instant(end, tz) == end_at:
        return explicit(start, end, time_zone)

    return explicit(_local(start_at, _UTC), _local(end_at, _UTC), "UTC")


def resolve_relative(rule: RelativeWindowRule, at: datetime) -> Window:
    tz = zone(rule.time_zone)
    end = _align_end(at.astimezone(UTC) - rule.lag, rule.align, tz)
    end_at = end.replace(tzinfo=tz).astimezone(UTC)
    if _is_whole_days(rule.last):
        # Days by the local calendar: the same wall-clock time ``last`` days
        # earlier, so a day across a daylight-saving change is 23 or 25 hours.
        start = (end - rule.last).replace(fold=0)
        return _real_window(start, end, _instant(start, tz), end_at, rule.time_zone)

    # Hours are real time, counted back from the end's own pass of the clock.
    start_at = end_at - rule.last
    return _real_window(_local(start_at, tz), end, start_at, end_at, rule.time_zone)


def resolve(rule: WindowRule, at: datetime) -> Window:
    """The concrete window of ``rule`` for a run created at ``at`` (aware)."""
    if at.tzinfo is None:
        raise ValueError("resolve() needs an aware datetime")

    if isinstance(rule, RelativeWindowRule):
        return resolve_relative(rule, at)

    if isinstance(rule, ExplicitWindowRule):
        start = parse_amc_time(expand_expressions(rule.start, at, rule.time_zone))
        end = parse_amc_time(expand_expressions(rule.end, at, rule.time_zone))
        if start >= end:
            raise ValueError(
                f"window {rule.start} to {rule.end} is empty at {at.isoformat()}"
            )

        return Window("EXPLICIT", start, end, rule.time_zone)

    return Window(rule.type, time_zone=rule.time_zone)


def explicit(start: datetime, end: datetime, time_zone: str = "UTC") -> Window:
    """An explicit window; ``start`` and ``end`` are naive local times."""
    zone(time_zone)
    if start >= end:
        raise ValueError("start must be before end")

    return Window(
        "EXPLICIT",
        start.replace(microsecond=0, fold=0),
        end.replace(microsecond=0, fold=0),
        time_zone,
    )


def tumbling(
    start: datetime, end: datetime, step: timedelta, time_zone: str = "UTC"
) -> Iterator[Window]:
    """Consecutive windows of ``step`` from ``start`` up to ``end``.

    Whole-day steps follow the calendar of ``time_zone``, so a week stays seven
    local days across a daylight-saving change; other steps are real time, so
    the hour repeated when the clocks go back is a window of its own (in
    UTC, the only way to name it). The last window is cut at ``end`` when
    ``step`` does not divide the range.
    """
    if step <= timedelta(0):
        raise ValueError("step must be positive")

    if start >= end:
        raise ValueError("--from must be before --to")

    tz = zone(time_zone)
    if _is_whole_days(step):
        cursor = start
        while cursor < end:
            following = cursor + step
            yield explicit(cursor, min(following, end), time_zone)
            cursor = following

        return

    cursor, cursor_at, stop_at = start, _instant(start, tz), _instant(end, tz)
    while cursor_at < stop_at:
        following_at = min(cursor_at + step, stop_at)
        following = _local(following_at, tz)
        yield _real_window(cursor, following, cursor_at, following_at, time_zone)
        cursor, cursor_at = following, following_at
