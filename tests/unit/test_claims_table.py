"""docs/claims.md maps every README claim to a named test: each row names one, and each named test exists.

A test is named as ``tests/path/test_file.py::test_name`` or, for one case of a parametrized test,
``tests/path/test_file.py::test_name[id]``. The file must define that test function (read with ``ast``, nothing
is imported or collected); a bracketed id must be one of the test's parametrize ids, which for the rule fixtures
are the ``CODE-kind-name`` cases of tests/lint/fixtures/ (``_lintkit.all_cases``).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLAIMS = ROOT / "docs" / "claims.md"
NAME = re.compile(r"`(tests/[^`:]+\.py)::([A-Za-z_][A-Za-z0-9_]*)(?:\[([^\]`]+)\])?`")
ROW = re.compile(r"^\| *(\d+) *\|")


def table_rows(text: str) -> dict[str, list[tuple[str, str, str | None]]]:
    """Row number -> the tests its ``test(s)`` column names (the fourth of five columns)."""
    rows: dict[str, list[tuple[str, str, str | None]]] = {}
    for line in text.splitlines():
        found = ROW.match(line)
        if not found:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 5, f"row {found.group(1)} has {len(cells)} columns, not 5: {line}"
        assert found.group(1) not in rows, f"row number {found.group(1)} appears twice"
        rows[found.group(1)] = [(m.group(1), m.group(2), m.group(3)) for m in NAME.finditer(cells[3])]
    return rows


def _test_functions(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {
        node.name: node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
    }


def _literal_ids(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str] | None:
    """The ids a ``@pytest.mark.parametrize(..., ids=[...])`` or ``pytest.param(..., id=...)`` spells out;
    None when they are computed (then the caller must know where they come from)."""
    ids: set[str] = set()
    for decorator in function.decorator_list:
        if not (isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("parametrize")):
            continue
        for keyword in decorator.keywords:
            if keyword.arg == "ids":
                try:
                    ids.update(str(i) for i in ast.literal_eval(keyword.value))
                except ValueError:
                    return None
        for node in ast.walk(decorator):
            if isinstance(node, ast.keyword) and node.arg == "id" and isinstance(node.value, ast.Constant):
                ids.add(str(node.value.value))
    return ids


def _rule_fixture_ids() -> set[str]:
    sys.path.insert(0, str(ROOT / "tests" / "lint"))
    try:
        from _lintkit import all_cases
    finally:
        sys.path.remove(str(ROOT / "tests" / "lint"))
    return {case.id for case in all_cases()}


COMPUTED_IDS = {("tests/lint/test_rule_fixtures.py", "test_rule_fixture_case"): _rule_fixture_ids}


def missing_tests(rows: dict[str, list[tuple[str, str, str | None]]]) -> list[str]:
    """Every named test that does not exist, as ``row N: path::name[id]`` with the reason."""
    problems: list[str] = []
    functions: dict[str, dict[str, ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    computed: dict[tuple[str, str], set[str]] = {}
    for row, names in rows.items():
        for path, name, case in names:
            shown = f"row {row}: {path}::{name}" + (f"[{case}]" if case else "")
            if path not in functions:
                functions[path] = _test_functions(ROOT / path) if (ROOT / path).is_file() else {}
                if not (ROOT / path).is_file():
                    problems.append(f"{shown}: no such file")
                    continue
            function = functions[path].get(name)
            if function is None:
                if (ROOT / path).is_file():
                    problems.append(f"{shown}: {path} defines no test function {name}")
                continue
            if case is None:
                continue
            if (path, name) in COMPUTED_IDS:
                if (path, name) not in computed:
                    computed[path, name] = COMPUTED_IDS[path, name]()
                ids = computed[path, name]
            else:
                ids = _literal_ids(function) or set()
            if case not in ids:
                problems.append(f"{shown}: {name} has no parametrized id {case!r}")
    return problems


def test_every_row_of_the_claims_table_names_at_least_one_test() -> None:
    rows = table_rows(CLAIMS.read_text(encoding="utf-8"))

    assert len(rows) >= 100, "the table was not read"
    assert [row for row, names in rows.items() if not names] == []


def test_every_test_the_claims_table_names_exists() -> None:
    rows = table_rows(CLAIMS.read_text(encoding="utf-8"))

    assert missing_tests(rows) == []


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        (
            "`tests/unit/test_durations.py::test_every_unit_parses_to_second`",
            "row 1: tests/unit/test_durations.py::test_every_unit_parses_to_second: "
            "tests/unit/test_durations.py defines no test function test_every_unit_parses_to_second",
        ),
        (
            "`tests/unit/test_duration.py::test_every_unit_parses_to_seconds`",
            "row 1: tests/unit/test_duration.py::test_every_unit_parses_to_seconds: no such file",
        ),
        (
            "`tests/lint/test_rule_fixtures.py::test_rule_fixture_case[CP103-fail-soft-over-hard]`",
            "row 1: tests/lint/test_rule_fixtures.py::test_rule_fixture_case[CP103-fail-soft-over-hard]: "
            "test_rule_fixture_case has no parametrized id 'CP103-fail-soft-over-hard'",
        ),
        (
            "`tests/cli/test_cli_check.py::test_select_takes_prefixes[x]`",
            "row 1: tests/cli/test_cli_check.py::test_select_takes_prefixes[x]: "
            "test_select_takes_prefixes has no parametrized id 'x'",
        ),
    ],
    ids=["misspelt-function", "misspelt-file", "unknown-fixture-case", "not-parametrized"],
)
def test_a_misspelt_name_is_reported(cell: str, problem: str) -> None:
    """The check has teeth: a row naming a test that is not there fails it, with the row and the reason."""
    rows = table_rows(f"| 1 | Set up | a claim | {cell} | unit |\n")

    assert missing_tests(rows) == [problem]


def test_a_row_without_a_test_is_reported() -> None:
    rows = table_rows("| 1 | Set up | a claim | none yet | unit |\n| 2 | Set up | another | `tests/x.py` | unit |\n")

    assert [row for row, names in rows.items() if not names] == ["1", "2"]
