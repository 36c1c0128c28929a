"""The rule registry: every rule is documented, has a fixture with failing and passing cases, and is listed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from _lintkit import FIXTURES, load_fixture

from celery_policy.errors import Diagnostic
from celery_policy.lint.registry import HEADINGS, RULES, find_rule, is_selected, rule, unknown_selectors
from celery_policy.lint.rules import LintContext

CODES = sorted(RULES)


def test_codes_are_grouped_by_hundreds_and_names_are_kebab_case() -> None:
    assert CODES, "no rules registered"
    for code, entry in RULES.items():
        assert re.fullmatch(r"CP[123]\d\d", code)
        assert re.fullmatch(r"[a-z]+(-[a-z0-9]+)*", entry.name)
        family = {"1": "error", "2": "warning"}.get(code[2])
        if family is not None:
            assert entry.severity == family, f"{code}: CP{code[2]}xx rules are {family}s"
    assert len({entry.name for entry in RULES.values()}) == len(RULES)


@pytest.mark.parametrize("code", CODES)
def test_rule_docstring_has_every_heading_and_a_bad_and_good_example(code: str) -> None:
    entry = RULES[code]
    for heading in HEADINGS:
        assert entry.section(heading), f"{code} has no '{heading}' section"
    example = entry.section("Example:")
    assert "bad:" in example
    assert "good:" in example
    assert entry.summary
    assert not entry.summary.endswith(".")


@pytest.mark.parametrize("code", CODES)
def test_rule_has_a_fixture_with_failing_and_passing_cases(code: str) -> None:
    path = FIXTURES / f"{code}.yaml"
    assert path.exists(), f"missing fixture {path}"
    cases = load_fixture(path)
    fails = [c for c in cases if c.kind == "fail"]
    assert fails, f"{code} has no failing case"
    assert [c for c in cases if c.kind == "pass"], f"{code} has no passing case"
    assert all(c.lines for c in fails), "every failing case names the lines it fires at"


def test_every_fixture_belongs_to_a_rule() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.yaml")) == CODES


def test_a_code_cannot_be_registered_twice() -> None:
    def again(ctx: LintContext) -> Iterator[Diagnostic]:
        """What it does: nothing."""
        yield from ()

    with pytest.raises(ValueError, match="registered twice"):
        rule("CP103", "another-name")(again)
    with pytest.raises(ValueError, match="registered twice"):
        rule("CP199", "soft-not-below-hard")(again)
    with pytest.raises(ValueError, match="CP plus 3 digits"):
        rule("X103", "whatever")(again)
    with pytest.raises(ValueError, match="kebab-case"):
        rule("CP198", "Not_Kebab")(again)
    assert "CP198" not in RULES
    assert "CP199" not in RULES


def test_rules_are_found_by_code_name_or_alias_in_any_case() -> None:
    assert find_rule("cp103") is RULES["CP103"]
    assert find_rule("soft-not-below-hard") is RULES["CP103"]
    assert find_rule("CP999") is None


def test_selectors_take_codes_prefixes_and_names_and_ignore_wins() -> None:
    assert is_selected("CP103", ["CP1"], [])
    assert not is_selected("CP201", ["CP1"], [])
    assert is_selected("CP205", ["CP20"], [])
    assert not is_selected("CP205", ["CP2"], ["CP205"])
    assert is_selected("CP301", ["unknown-task"], [])
    assert unknown_selectors(["CP1", "CP9", "nonsense", "cp20"]) == ["CP9", "nonsense"]


def test_rules_command_lists_every_rule_on_one_line(run_cli: Any) -> None:
    result = run_cli("rules")
    assert result.code == 0
    lines = result.out.splitlines()
    assert [line.split()[0] for line in lines] == CODES
    for line, code in zip(lines, CODES, strict=True):
        entry = RULES[code]
        assert line.split()[1:3] == [entry.name, entry.severity]


@pytest.mark.parametrize("code", CODES)
def test_rules_command_explains_one_rule(code: str, run_cli: Any) -> None:
    result = run_cli("rules", code.lower())
    assert result.code == 0
    assert result.out.startswith(f"{code} {RULES[code].name} ({RULES[code].severity}")
    for heading in HEADINGS:
        assert heading in result.out


def test_rules_command_rejects_an_unknown_rule(run_cli: Any) -> None:
    result = run_cli("rules", "CP10")
    assert result.code == 2
    assert "unknown rule 'CP10'" in result.err


def test_rules_declare_what_they_need_beyond_the_policy_files() -> None:
    """Callers that have no app or broker (boot validation, check without --app) pick rules by these flags."""
    assert all(entry.needs_app for entry in RULES.values() if entry.needs_broker)
    assert RULES["CP307"].needs_broker
    assert not RULES["CP307"].standalone
    assert RULES["CP301"].needs_app
    assert not RULES["CP301"].needs_broker
    assert RULES["CP103"].standalone
    assert RULES["CP205"].standalone
    assert [c for c, e in RULES.items() if e.severity == "error" and e.standalone and e.emitted_by == "lint"]
