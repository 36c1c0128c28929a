"""docs/: the rule pages match the registry, every command has a page, and the public API type-checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.servers import REPO_ROOT

import celery_policy.lint.rules  # noqa: F401  (registers the rules)
from celery_policy.cli import cli, main
from celery_policy.lint.registry import RULES

DOCS = REPO_ROOT / "docs"


def test_rule_pages_are_generated_from_the_registry_and_current() -> None:
    done = subprocess.run(
        [sys.executable, str(DOCS / "generate_rules.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.stem for p in (DOCS / "rules").glob("CP*.md")) == sorted(RULES)


@pytest.mark.parametrize("code", sorted(RULES))
def test_each_rule_page_carries_what_rules_code_prints(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", code]) == 0
    printed = capsys.readouterr().out
    page = (DOCS / "rules" / f"{code}.md").read_text()
    rule = RULES[code]
    assert page.startswith(f"# {code} {rule.name}\n")
    assert printed.startswith(f"{code} {rule.name} ({rule.severity}")
    for heading in ("What it does:", "Why:"):
        body = rule.section(heading)
        assert body, f"{code} has no '{heading}' section"
        assert body in page
        assert body in printed


def test_every_command_has_a_page() -> None:
    pages = {p.stem for p in (DOCS / "cli").glob("*.md")}
    assert set(cli.commands) <= pages, f"no page for {sorted(set(cli.commands) - pages)}"
    assert "celery-policy-subcommand" in pages
    index = (DOCS / "README.md").read_text()
    for page in pages:
        assert f"cli/{page}.md" in index


def test_public_api_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    mypy = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental"]
    done = subprocess.run(
        [*mypy, str(REPO_ROOT / "tests" / "typing" / "public_api.py")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # and the check has teeth: a wrong use of the same API is an error
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from celery_policy import load\n\nbudget: str = load('p.yaml').for_task('t').policy.retry.max_retries\n"
    )
    done = subprocess.run([*mypy, str(wrong)], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "Incompatible types in assignment" in done.stdout


def test_an_unknown_format_version_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 2\n")
    assert main(["check", str(policy)]) == 1
    out = capsys.readouterr().out
    assert f"{policy}:1:10: CP101 error: unsupported version 2 (version)" in out
    assert "this release reads version: 1" in out
