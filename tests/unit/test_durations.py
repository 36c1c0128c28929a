"""Durations: the one place units are parsed and printed."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from celery_policy.durations import DurationError, format_duration, parse_duration
from celery_policy.model import Backoff, RetryPolicy, TimeoutPolicy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("0.25m", 15.0),
    ],
)
def test_every_unit_parses_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400.0),
        ("5m30s", 330.0),
        ("1d2h3m4s", 93784.0),
        ("1s500ms", 1.5),
        ("1w1d", 691200.0),
        ("1h 30m", 5400.0),
        ("  45s  ", 45.0),
    ],
)
def test_combined_parts_add_up(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "seconds"), [(0, 0.0), (30, 30.0), (1.5, 1.5), ("30", 30.0), ("2.5", 2.5), ("1e3", 1000.0)]
)
def test_plain_numbers_are_seconds(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_result_is_always_a_float() -> None:
    assert type(parse_duration(30)) is float
    assert type(parse_duration("30s")) is float


@pytest.mark.parametrize("value", [-1, -0.5, "-5", "-1.5"])
def test_negative_numbers_are_rejected(value: object) -> None:
    with pytest.raises(DurationError, match="must not be negative"):
        parse_duration(value)


def test_negative_unit_string_is_rejected() -> None:
    with pytest.raises(DurationError, match="is not a duration"):
        parse_duration("-5s")


@pytest.mark.parametrize(
    "text",
    ["", " ", "m", "5x", "5 minutes", "1.5.5s", "5s5", "1M", "5S", "h1", "s", "1h-30m", "five seconds", "5sec", "PT5M"],
)
def test_garbage_strings_are_rejected_with_examples(text: str) -> None:
    with pytest.raises(DurationError, match=r"is not a duration; use a number of seconds or e\.g\. 500ms"):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_durations(value: bool) -> None:
    """``True`` is an int in Python, and ``deadline: yes``/``true`` must not mean one second."""
    with pytest.raises(DurationError, match="boolean"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "infinity"])
def test_nan_and_infinity_are_rejected(value: object) -> None:
    with pytest.raises(DurationError, match="finite"):
        parse_duration(value)


@pytest.mark.parametrize("value", [None, [1], {"s": 1}, object()])
def test_other_types_are_rejected_by_type_name(value: object) -> None:
    with pytest.raises(DurationError, match="expected a duration, got"):
        parse_duration(value)


def test_duration_error_is_a_value_error() -> None:
    """Pydantic turns ValueError from a validator into a validation error."""
    assert issubclass(DurationError, ValueError)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.0005, "0.5ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (30, "30s"),
        (60, "1m"),
        (90, "1m30s"),
        (330, "5m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400, "1d"),
        (86401, "1d1s"),
        (93784, "1d2h3m4s"),
        (604800, "7d"),
    ],
)
def test_format_writes_durations_as_users_do(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_never_rounds_up_to_sixty_seconds() -> None:
    """59.9999s rounds to a whole minute, which reads ``1m``, not ``60s``."""
    assert format_duration(59.9999) == "1m"
    assert format_duration(3599.9999) == "1h"


def test_format_of_a_tiny_duration_still_parses() -> None:
    assert parse_duration(format_duration(1e-8)) == pytest.approx(1e-8, abs=1e-6)


@given(st.floats(min_value=0, max_value=10 * 365 * 86400, allow_nan=False, allow_infinity=False))
def test_format_then_parse_round_trips_to_the_millisecond(seconds: float) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-3, rel=1e-9)


@given(st.floats(min_value=0, max_value=10 * 365 * 86400, allow_nan=False, allow_infinity=False))
def test_format_is_canonical(seconds: float) -> None:
    """Formatting what was parsed from a formatted value gives the same text."""
    text = format_duration(seconds)
    assert format_duration(parse_duration(text)) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_whole_seconds_round_trip_exactly(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_model_fields_accept_durations_and_numbers() -> None:
    timeout = TimeoutPolicy.model_validate({"soft": "5m", "hard": 330, "expires": "1h30m"})
    assert (timeout.soft, timeout.hard, timeout.expires) == (300.0, 330.0, 5400.0)
    assert Backoff.model_validate({"initial": "500ms", "max": "5m"}).initial == 0.5
    assert RetryPolicy.model_validate({"deadline": "1d"}).deadline == 86400.0


@pytest.mark.parametrize("value", [True, "soon", -1, math.nan])
def test_model_fields_reject_bad_durations(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy.model_validate({"deadline": value})
    assert info.value.errors()[0]["loc"][0] == "deadline"
