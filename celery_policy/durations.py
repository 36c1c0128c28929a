"""Durations: ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1d"``, ``"2w"`` or plain seconds.

This is the only module that knows about units; everything else carries float seconds.
The units are exactly ``ms s m h d w``; spaces are allowed anywhere (``"1h 30m"``,
``"500 ms"``), and the JSON Schema pattern accepts the same strings as the parser.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)"
_FULL_RE = re.compile(rf"^\s*(?:{_PART}\s*)+$")
_PART_RE = re.compile(_PART)
_NUMBER_RE = re.compile(r"^\s*\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\s*$")
# the JSON Schema pattern: exactly the strings the parser accepts (spaces between parts and units, none in numbers)
DURATION_PATTERN = r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$|^\s*\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\s*$"
UNITS = "ms (milliseconds), s, m (minutes), h, d, w (weeks)"
DURATION_HINT = f"write a number of seconds or a duration such as 500ms, 30s, 5m, 1h30m, 1d, 2w; units: {UNITS}"


class DurationError(ValueError):
    """A value is not a valid duration."""


def parse_duration(value: object) -> float:
    """Return ``value`` as float seconds, or raise :class:`DurationError`.

    Accepts non-negative numbers (seconds) and strings of one or more
    ``<number><unit>`` parts, units ``ms s m h d w``: ``"1h30m"`` is 5400.0.
    """
    if isinstance(value, bool):
        raise DurationError(f"expected a duration, got a boolean {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _FULL_RE.match(text) is not None:
            seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _PART_RE.findall(text))
        elif _NUMBER_RE.match(text) is not None:
            seconds = float(text)
        else:
            seconds = _number_for_the_error(value, text)
    else:
        raise DurationError(f"expected a duration, got {type(value).__name__}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise DurationError(f"duration must be finite, got {value!r}")
    if seconds < 0:
        raise DurationError(f"duration must not be negative, got {value!r}")
    return seconds


def _number_for_the_error(value: str, text: str) -> float:
    """A string that is no duration: a negative or infinite number gets its own message below."""
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and (number < 0 or math.isnan(number) or math.isinf(number)):
        return number
    unit = re.search(r"\d\s*([a-z]+)", text.lower())  # the word after a number, as in "5 min"
    not_one = "" if unit is None or unit.group(1) in _UNIT_S else f"; '{unit.group(1)}' is not one"
    msg = (
        f"'{value}' is not a duration; use a number of seconds or e.g. 500ms, 30s, 5m, 1h30m, 1d "
        f"(units: ms, s, m, h, d, w{not_one})"
    )
    raise DurationError(msg)


def format_duration(seconds: float) -> str:
    """Render seconds the way users write them: 90 -> ``1m30s``, 0.5 -> ``500ms``."""
    # Round before splitting into units: rounding only the leftover seconds would
    # turn 59.9999 into "60s", and a tiny value would print in exponent notation.
    seconds = round(seconds, 6)
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    seconds = round(seconds, 3)
    parts = []
    rest = seconds
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        count = int(rest // size)
        if count:
            parts.append(f"{count}{unit}")
            rest -= count * size
    if rest or not parts:
        parts.append(f"{round(rest, 3):g}s")
    return "".join(parts)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": f"seconds, or a string such as 500ms, 30s, 5m, 1h30m, 1d, 2w (units: {UNITS})",
        }
    ),
]


# --- rates (flow control limits) ---------------------------------------------------------------

_RATE_UNITS = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hour": "h", "day": "d"}
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)/(.+)$")
RATE_PATTERN = r"^\s*\d+(\.\d+)?\s*/\s*(\d+(\.\d+)?)?\s*(ms|s|m|h|d|sec|second|min|minute|hour|day)\s*$"


def parse_rate(value: object) -> float:
    """``"40/s"``, ``"100/m"``, ``"5/10s"`` -> events per second; raises :class:`DurationError`."""
    text = str(value).strip().replace(" ", "") if isinstance(value, str) else None
    found = _RATE_RE.match(text) if text else None
    if found is None:
        msg = f"'{value}' is not a rate; write a count per period such as 40/s, 100/m, 5/10s"
        raise DurationError(msg)
    count, period = float(found.group(1)), found.group(2)
    period = _RATE_UNITS.get(period, period)
    if period in _UNIT_S:
        period = f"1{period}"
    try:
        seconds = parse_duration(period)
    except DurationError:
        msg = f"'{value}' is not a rate; write a count per period such as 40/s, 100/m, 5/10s"
        raise DurationError(msg) from None
    if count <= 0 or seconds <= 0:
        msg = f"'{value}' is not a rate; the count and the period must be greater than 0"
        raise DurationError(msg)
    return count / seconds
