"""Durations written the way operators write them: ``90s``, ``15m``, ``48h``, ``7d``."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Ten years: longer is a typo, and would overflow date arithmetic.
LONGEST = timedelta(days=3650)
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(value: object) -> timedelta:
    """Parse ``1h30m``, ``7d``, a number of seconds, or a timedelta."""
    delta = _parse(value)
    if abs(delta) > LONGEST:
        raise ValueError(_too_long(value))

    return delta


def _quoted(value: object) -> str:
    """The value as an error message quotes it: a huge one is cut short."""
    if isinstance(value, int) and value.bit_length() > 128:
        return "(a number of more than 38 digits)"

    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:36] + "...'"


def _too_long(value: object) -> str:
    return f"duration {_quoted(value)} is longer than ten years"


def _seconds(seconds: int | float | str, value: object) -> timedelta:
    try:
        number = float(seconds)
    except OverflowError:
        raise ValueError(_too_long(value)) from None

    if not math.isfinite(number) or abs(number) > LONGEST.total_seconds():
        raise ValueError(_too_long(value))

    return timedelta(seconds=number)


def _parse(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value

    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 2h or 7d")

    if isinstance(value, int | float):
        return _seconds(value, value)

    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s, 15m, 2h or 7d")

    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("expected a duration such as 30s, 15m, 2h or 7d")

    if re.fullmatch(r"\d+(\.\d+)?", text):
        return _seconds(text, value)

    pos = 0
    seconds = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break

        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()

    if pos != len(text):
        raise ValueError(
            f"invalid duration {_quoted(value)}:"
            " expected a duration such as 30s, 15m, 2h or 7d"
        )

    return _seconds(seconds, value)


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of a duration, e.g. ``1h30m``."""
    total = delta.total_seconds()
    if total == 0:
        return "0s"

    if total != int(total):
        return f"{total:g}s"

    rest = int(total)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size

    return "".join(parts)


def _check_positive(value: Any) -> timedelta:
    delta = parse_duration(value)
    if delta <= timedelta(0):
        raise ValueError("must be a positive duration")

    return delta


def _check_non_negative(value: Any) -> timedelta:
    delta = parse_duration(value)
    if delta < timedelta(0):
        raise ValueError("must not be negative")

    return delta


_serialize = PlainSerializer(format_duration, return_type=str)

Duration = Annotated[timedelta, BeforeValidator(parse_duration), _serialize]
PositiveDuration = Annotated[timedelta, BeforeValidator(_check_positive), _serialize]
NonNegativeDuration = Annotated[
    timedelta, BeforeValidator(_check_non_negative), _serialize
]
