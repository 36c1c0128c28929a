"""The event-based YAML reader: plain data, a span per key path, YAML 1.2 scalars."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_policy._yaml import MAX_DEPTH, ParsedYaml, YamlError, parse_yaml, render_path
from celery_policy.errors import PolicyError
from celery_policy.loader import read_policy_file, validate_document


def parse(text: str) -> ParsedYaml:
    return parse_yaml(textwrap.dedent(text), "policy.yaml")


def where(parsed: ParsedYaml, *path: str | int) -> tuple[int, int]:
    """Line and column of the value at ``path``."""
    span = parsed.spans[path]
    return span.value.line, span.value.column


def key_at(parsed: ParsedYaml, *path: str | int) -> tuple[int, int]:
    span = parsed.spans[path]
    assert span.key is not None
    return span.key.line, span.key.column


def parse_error(text: str) -> YamlError:
    with pytest.raises(YamlError) as info:
        parse(text)
    return info.value


# --- spans -------------------------------------------------------------------


def test_every_key_path_has_the_line_and_column_of_its_key_and_value() -> None:
    parsed = parse(
        """\
        version: 1
        defaults:
          retry:
            max_retries: 5
            on: [transient, builtins.KeyError]
        """
    )
    assert parsed.data == {
        "version": 1,
        "defaults": {"retry": {"max_retries": 5, "on": ["transient", "builtins.KeyError"]}},
    }
    assert key_at(parsed, "version") == (1, 1)
    assert where(parsed, "version") == (1, 10)
    assert key_at(parsed, "defaults", "retry", "max_retries") == (4, 5)
    assert where(parsed, "defaults", "retry", "max_retries") == (4, 18)
    assert where(parsed, "defaults", "retry", "on", 0) == (5, 10)
    assert where(parsed, "defaults", "retry", "on", 1) == (5, 21)


def test_a_block_mapping_value_starts_at_its_first_key() -> None:
    parsed = parse(
        """\
        tasks:
          "reports.*":
            timeout: {soft: 30m}
        """
    )
    assert key_at(parsed, "tasks", "reports.*") == (2, 3)
    assert where(parsed, "tasks", "reports.*") == (3, 5)
    assert where(parsed, "tasks", "reports.*", "timeout", "soft") == (3, 21)


def test_items_of_a_block_sequence_have_their_own_lines() -> None:
    parsed = parse(
        """\
        rules:
          - on: [a.B]
            max_retries: 2
          - on: [c.D]
        """
    )
    assert where(parsed, "rules", 0) == (2, 5)
    assert where(parsed, "rules", 1) == (4, 5)
    assert key_at(parsed, "rules", 1, "on") == (4, 5)
    assert where(parsed, "rules", 0, "max_retries") == (3, 18)


def test_the_root_span_is_the_start_of_the_file() -> None:
    assert where(parse("a: 1\n"), *()) == (1, 1)


def test_a_byte_order_mark_does_not_shift_columns(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes("\ufeffversion: 1\nworker: {prefetch_multiplier: 1}\n".encode())
    raw = read_policy_file(path)
    assert raw.data["version"] == 1
    assert raw.source[("worker", "prefetch_multiplier")].location.column == 31


# --- YAML 1.2 scalars ----------------------------------------------------------


def test_on_is_a_string_key_not_true() -> None:
    parsed = parse("retry:\n  on: [transient]\n  never: [permanent]\n")
    assert parsed.data == {"retry": {"on": ["transient"], "never": ["permanent"]}}
    assert True not in parsed.data["retry"]


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "NO", "On", "OFF"])
def test_yaml_1_1_booleans_stay_strings(word: str) -> None:
    assert parse(f"value: {word}\n").data == {"value": word}


@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_yaml_1_2_booleans_are_booleans(text: str, value: bool) -> None:
    assert parse(f"value: {text}\n").data["value"] is value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("-7", -7),
        ("+3", 3),
        ("0x1F", 31),
        ("0o17", 15),
        ("010", 10),  # YAML 1.2: decimal, not octal
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("~", None),
        ("null", None),
        ("", None),
        ("1_000", "1_000"),  # YAML 1.2 has no digit separators
        ("5m", "5m"),
        ("1h30m", "1h30m"),
        ("'42'", "42"),
        ('"true"', "true"),
        ("!!str 5", "5"),
        ("!!int '7'", 7),
        ("!!float '2'", 2.0),
    ],
)
def test_scalars_follow_the_yaml_1_2_core_schema(text: str, value: object) -> None:
    got = parse(f"value: {text}\n").data["value"]
    assert got == value
    assert type(got) is type(value)


def test_special_floats_are_read_so_validation_can_reject_them() -> None:
    data = parse("a: .inf\nb: -.inf\nc: .nan\n").data
    assert data["a"] == math.inf
    assert data["b"] == -math.inf
    assert math.isnan(data["c"])


def test_unsafe_tags_are_refused_with_their_position() -> None:
    error = parse_error("hook: !!python/object/apply:os.system [ls]\n")
    assert error.diagnostic.code == "CP100"
    assert "unsupported YAML tag" in error.diagnostic.message
    assert error.diagnostic.location is not None
    assert error.diagnostic.location.line == 1


# --- duplicate keys ---------------------------------------------------------------


def test_duplicate_keys_are_reported_at_the_second_key() -> None:
    parsed = parse(
        """\
        defaults:
          retry: {max_retries: 1}
          timeout: {soft: 5s}
          retry: {max_retries: 2}
        """
    )
    [diagnostic] = parsed.diagnostics
    assert diagnostic.code == "CP108"
    assert diagnostic.message == "duplicate key 'retry' (first at line 2)"
    assert diagnostic.location is not None
    assert (diagnostic.location.line, diagnostic.location.column) == (4, 3)
    assert diagnostic.path == "defaults.retry"
    assert diagnostic.hint is not None


def test_duplicate_keys_inside_a_flow_mapping_are_reported() -> None:
    parsed = parse("backoff: {initial: 1s, initial: 2s}\n")
    assert [d.code for d in parsed.diagnostics] == ["CP108"]


def test_a_duplicate_key_in_a_file_is_an_error_of_the_loader(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nworker: {}\nworker: {}\n")
    with pytest.raises(PolicyError) as info:
        validate_document(read_policy_file(path))
    assert [d.code for d in info.value.diagnostics] == ["CP108"]


def test_same_key_in_different_mappings_is_not_a_duplicate() -> None:
    assert parse("a: {x: 1}\nb: {x: 2}\n").diagnostics == []


# --- anchors, aliases, merge keys -----------------------------------------------


def test_an_alias_copies_the_value_and_points_at_where_it_was_written() -> None:
    parsed = parse(
        """\
        errors:
          transient: &transient [builtins.TimeoutError]
        defaults:
          retry:
            on: *transient
        """
    )
    assert parsed.data["defaults"]["retry"]["on"] == ["builtins.TimeoutError"]
    assert key_at(parsed, "defaults", "retry", "on") == (5, 5)
    assert where(parsed, "defaults", "retry", "on") == (5, 9)
    assert where(parsed, "defaults", "retry", "on", 0) == (2, 26)


def test_aliased_data_is_a_copy_not_a_shared_object() -> None:
    parsed = parse("a: &x {k: [1]}\nb: *x\n")
    parsed.data["b"]["k"].append(2)
    assert parsed.data["a"] == {"k": [1]}


def test_merge_key_keys_keep_the_lines_of_the_anchor() -> None:
    parsed = parse(
        """\
        base: &base
          soft: 5m
          hard: 6m
        tasks:
          reports:
            timeout:
              <<: *base
              hard: 31m
        """
    )
    timeout = parsed.data["tasks"]["reports"]["timeout"]
    assert timeout == {"soft": "5m", "hard": "31m"}
    assert where(parsed, "tasks", "reports", "timeout", "soft") == (2, 9)
    assert where(parsed, "tasks", "reports", "timeout", "hard") == (8, 13)


def test_a_list_of_merge_aliases_keeps_the_lines_of_each_anchor() -> None:
    parsed = parse(
        """\
        a: &a {x: 1}
        b: &b
          y: 2
        o:
          <<: [*a, *b]
          z: 3
        """
    )
    assert parsed.data["o"] == {"x": 1, "y": 2, "z": 3}
    assert where(parsed, "o", "x") == (1, 11)
    assert where(parsed, "o", "y") == (3, 6)
    assert where(parsed, "o", "z") == (6, 6)


def test_an_inline_merge_mapping_keeps_its_own_lines() -> None:
    parsed = parse("o:\n  <<: {x: 1, y: {z: 2}}\n  w: 3\n")
    assert parsed.data["o"] == {"x": 1, "y": {"z": 2}, "w": 3}
    assert where(parsed, "o", "x") == (2, 11)
    assert where(parsed, "o", "y", "z") == (2, 21)


def test_the_first_merged_mapping_wins_over_later_ones() -> None:
    parsed = parse("a: &a {x: 1}\nb: &b {x: 2}\no:\n  <<: [*a, *b]\n")
    assert parsed.data["o"] == {"x": 1}
    assert where(parsed, "o", "x") == (1, 11)


def test_a_merge_key_needs_a_mapping() -> None:
    error = parse_error("a: &a [1]\no:\n  <<: *a\n")
    assert "merge key" in error.diagnostic.message


def test_an_anchor_inside_a_merge_list_can_be_used_again() -> None:
    parsed = parse("o:\n  <<: [&m {x: 1}]\np: *m\n")
    assert parsed.data["p"] == {"x": 1}
    assert where(parsed, "p", "x") == (2, 15)


def test_an_unknown_alias_is_an_error() -> None:
    error = parse_error("a: *nowhere\n")
    assert error.diagnostic.code == "CP100"
    assert error.diagnostic.location is not None
    assert error.diagnostic.location.line == 1


# --- documents, tabs, depth, keys --------------------------------------------------


def test_a_second_document_is_an_error_at_its_start() -> None:
    error = parse_error("version: 1\n---\nversion: 1\n")
    assert error.diagnostic.message == "a policy file holds one YAML document, found a second"
    assert error.diagnostic.location is not None
    assert error.diagnostic.location.line == 2


def test_an_explicit_single_document_is_fine() -> None:
    assert parse("---\nversion: 1\n...\n").data == {"version": 1}


def test_an_empty_document_reads_as_none() -> None:
    assert parse("").data is None
    assert parse("# only a comment\n").data is None


def test_tab_indentation_is_reported_with_a_hint_about_spaces(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ndefaults:\n\tretry: {}\n")
    with pytest.raises(PolicyError) as info:
        read_policy_file(path)
    [diagnostic] = info.value.diagnostics
    assert diagnostic.code == "CP100"
    assert diagnostic.location is not None
    assert diagnostic.location.line == 3
    assert diagnostic.hint == "YAML indentation must use spaces, not tabs"


def test_syntax_errors_point_at_the_problem() -> None:
    error = parse_error("a:\n  b: [1, 2\nc: 3\n")
    assert error.diagnostic.code == "CP100"
    assert error.diagnostic.message.startswith("invalid YAML: ")
    assert error.diagnostic.location is not None
    assert error.diagnostic.location.line == 3


def test_nesting_up_to_the_limit_is_fine() -> None:
    parsed = parse("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    node = parsed.data
    for _ in range(MAX_DEPTH - 1):
        node = node[0]
    assert node == []


def test_nesting_past_the_limit_is_an_error_at_the_first_level_too_deep() -> None:
    depth = MAX_DEPTH + 20
    error = parse_error("[" * depth + "]" * depth)
    assert error.diagnostic.message == f"document is nested deeper than {MAX_DEPTH} levels"
    assert error.diagnostic.location is not None
    assert error.diagnostic.location.column == MAX_DEPTH + 1
    assert error.diagnostic.hint is not None


def test_hostile_nesting_is_an_error_not_a_crash() -> None:
    depth = 100_000
    error = parse_error("[" * depth + "]" * depth)
    assert error.diagnostic.code == "CP100"


def test_deeply_nested_block_mappings_stop_with_an_error() -> None:
    text = "".join(f"{'  ' * level}k{level}:\n" for level in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "v: 1\n"
    error = parse_error(text)
    assert error.diagnostic.code == "CP100"


def test_scalar_keys_are_read_as_their_text() -> None:
    """Task names such as ``404`` or ``true`` are keys as written, never ints or booleans."""
    parsed = parse("1: a\ntrue: b\nnull: c\n2.5: d\n")
    assert parsed.data == {"1": "a", "true": "b", "null": "c", "2.5": "d"}


@pytest.mark.parametrize("text", ["? [a, b]\n: x\n", "? {a: 1}\n: x\n", "{[a]: 1}\n"])
def test_collection_keys_are_rejected(text: str) -> None:
    error = parse_error(text)
    assert error.diagnostic.message == "mapping keys must be plain strings"


def test_a_top_level_list_is_data_not_an_error_of_the_reader() -> None:
    assert parse("- a\n- b\n").data == ["a", "b"]


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("tasks", "reports.*", "timeout"), 'tasks."reports.*".timeout'),
        (("tasks", "orders_charge", "retry", "rules", 1, "backoff"), "tasks.orders_charge.retry.rules[1].backoff"),
        (("a b",), '"a b"'),
        (('say "hi"',), '"say \\"hi\\""'),
        ((), ""),
    ],
)
def test_render_path_quotes_keys_that_are_not_identifiers(path: tuple[str | int, ...], text: str) -> None:
    assert render_path(path) == text


def test_an_unterminated_quote_is_reported_where_it_opens_with_where_the_file_ends() -> None:
    error = parse_error('version: 1\ntasks:\n  "orders.charge:\n    retry: {max_retries: 3}\n  reports.daily: {}\n')
    assert error.diagnostic.location is not None
    assert (error.diagnostic.location.line, error.diagnostic.location.column) == (3, 3)
    assert "quoted string is never closed" in error.diagnostic.message
    assert "at line 6, column 1" in error.diagnostic.message  # libyaml's problem mark, mentioned


_PIECES = st.sampled_from(["a: ", "'", '"', "{", "}", "[", "]", ",", "\n", "  ", "- ", "x", "1", "#", ": ", "\t"])


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_PIECES, max_size=40))
def test_any_syntax_error_has_a_place_inside_the_file(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        parse_yaml(text, "f.yaml")
    except YamlError as exc:
        diagnostic = exc.diagnostic
    else:
        return
    assert diagnostic.code == "CP100"
    assert diagnostic.location is not None
    assert 1 <= diagnostic.location.line <= text.count("\n") + 2
