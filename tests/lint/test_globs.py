"""The exact glob-intersection check behind CP110: its witness matches both globs, and 'none' is true."""

from __future__ import annotations

import fnmatch
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_policy.lint.globs import candidate_pairs, common_match

ATOMS = ["a", "b", ".", "*", "?", "[ab]", "[!a]", "[a-c]", "[", "]", "!", "-"]
patterns = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=6).map("".join)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("orders.*", "*.charge", "orders.charge"),
        ("a.*", "b.*", None),
        ("a*b*c", "*c*b*a", None),
        ("[z-a]*", "*", None),
        ("*", "*", "a"),
        ("x[", "x[", "x["),
    ],
)
def test_known_pairs(first: str, second: str, expected: str | None) -> None:
    assert common_match(first, second) == expected


@settings(max_examples=300, deadline=None)
@given(patterns, patterns)
def test_witness_matches_both_and_none_means_no_short_name_matches_both(first: str, second: str) -> None:
    witness = common_match(first, second)
    if witness is not None:
        assert witness
        assert fnmatch.fnmatchcase(witness, first)
        assert fnmatch.fnmatchcase(witness, second)
        return
    # exhaustive over short names on the characters that matter (plus one other)
    for size in range(1, 5):
        for chars in itertools.product("abc.[]!-z", repeat=size):
            name = "".join(chars)
            assert not (fnmatch.fnmatchcase(name, first) and fnmatch.fnmatchcase(name, second)), name


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns, min_size=2, max_size=8, unique=True))
def test_candidate_pairs_never_drop_an_overlapping_pair(globs: list[str]) -> None:
    candidates = {frozenset(pair) for pair in candidate_pairs(globs)}
    for index, first in enumerate(globs):
        for second in globs[index + 1 :]:
            if common_match(first, second) is not None:
                assert frozenset((first, second)) in candidates, (first, second)
