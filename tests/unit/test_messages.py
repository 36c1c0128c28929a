"""Messages that explain the input: a misplaced block, a rate limit, a duration (one rule for spaces and units)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_policy.durations import DURATION_PATTERN, DurationError, parse_duration
from celery_policy.errors import PolicyError
from celery_policy.resolve import load


def _errors(tmp_path: Path, text: str) -> list[tuple[str, str, str | None]]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as raised:
        load(path, check_imports=False)
    return [(d.code, d.message, d.hint) for d in raised.value.diagnostics]


@pytest.mark.parametrize(
    ("key", "home"),
    [("backoff", "retry"), ("max_retries", "retry"), ("soft", "timeout"), ("late", "ack"), ("queue", "route")],
)
def test_a_key_written_one_level_too_high_gets_a_structural_hint(tmp_path: Path, key: str, home: str) -> None:
    found = _errors(tmp_path, f"version: 1\ntasks:\n  orders.charge:\n    {key}: 1\n")
    assert found == [
        (
            "CP102",
            f"unknown key '{key}' in tasks.\"orders.charge\"",
            f"'{key}' belongs under '{home}': write {home}: {{{key}: ...}} in tasks.\"orders.charge\"",
        )
    ]


def test_a_misspelt_key_still_gets_did_you_mean(tmp_path: Path) -> None:
    found = _errors(tmp_path, "version: 1\ndefaults:\n  retry: {max_retriez: 3}\n")
    assert found[0][2] == "did you mean 'max_retries'?"


@pytest.mark.parametrize("value", ["10/min", "ten/s", "10/d", "10 / s"])
def test_a_bad_rate_limit_is_explained_in_words(tmp_path: Path, value: str) -> None:
    found = _errors(tmp_path, f"version: 1\ndefaults:\n  rate_limit: '{value}'\n")
    assert len(found) == 1
    code, message, hint = found[0]
    assert (code, message) == ("CP101", f"rate_limit '{value}' is not a rate")
    assert hint is not None
    for example in ("10/m (ten a minute)", "100/s (a hundred a second)", "1/h (one an hour)"):
        assert example in hint
    assert "\\d" not in message + hint  # no raw regex


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500 ms", 0.5), ("5 m", 300.0), ("1h 30m", 5400.0), (" 2w ", 1209600.0), ("1.5 s", 1.5), ("30", 30.0)],
)
def test_spaces_are_allowed_anywhere_in_a_duration_and_w_is_weeks(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert re.match(DURATION_PATTERN, text), "the JSON Schema must accept what the parser accepts"


@pytest.mark.parametrize("text", ["5 min", "5 minutes", "1 hour", "2x"])
def test_a_unit_that_is_not_one_is_named_and_the_units_listed(text: str) -> None:
    with pytest.raises(DurationError) as raised:
        parse_duration(text)
    unit = re.search(r"[a-z]+", text)
    assert unit is not None
    assert f"'{unit.group(0)}' is not one" in str(raised.value)
    assert "units: ms, s, m, h, d, w" in str(raised.value)
    assert not re.match(DURATION_PATTERN, text)


@given(st.text(alphabet="0123456789.msdhw- xy", max_size=10))
def test_the_schema_pattern_and_the_parser_accept_the_same_strings(text: str) -> None:
    try:
        parse_duration(text)
        accepted = True
    except DurationError:
        accepted = False
    assert accepted == bool(re.match(DURATION_PATTERN, text)), text
