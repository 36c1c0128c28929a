"""`check --format sarif`, `# celery-policy: ignore[...]` comments and `[tool.celery-policy]` in pyproject.toml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from celery_policy.cli import main
from celery_policy.lint.registry import RULES

# CP201 (no cap on retries) on line 5, CP206 (no time limit) at `defaults` (line 2), CP103 on line 9.
POLICY = """\
version: 1
defaults:
  retry:
    on: [builtins.TimeoutError]
    max_retries: null
tasks:
  reports.build:
    timeout:
      soft: 6m
      hard: 5m
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def codes_by_line(out: str) -> set[tuple[str, int]]:
    data = json.loads(out)
    return {(f["code"], f["line"]) for f in data["findings"]}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CELERY_POLICY_FILE", raising=False)
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


def test_sarif_is_a_2_1_0_log_with_rules_results_and_relative_locations(project: Path, capsys: Any) -> None:
    code, out, _ = run(capsys, "check", "policy.yaml", "--format", "sarif")
    assert code == 1
    log = json.loads(out)
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    (the_run,) = log["runs"]
    driver = the_run["tool"]["driver"]
    assert driver["name"] == "celery-policy"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids == sorted({"CP103", "CP201", "CP206"})
    cp103 = driver["rules"][rule_ids.index("CP103")]
    assert cp103["name"] == "soft-not-below-hard"
    assert cp103["defaultConfiguration"] == {"level": "error"}
    assert cp103["help"]["text"] == RULES["CP103"].doc
    assert cp103["help"]["markdown"].startswith("# CP103 soft-not-below-hard")
    results = {r["ruleId"]: r for r in the_run["results"]}
    soft = results["CP103"]
    assert soft["level"] == "error"
    assert rule_ids[soft["ruleIndex"]] == "CP103"
    where = soft["locations"][0]["physicalLocation"]
    assert where["artifactLocation"] == {"uri": "policy.yaml", "uriBaseId": "%SRCROOT%"}
    assert where["region"]["startLine"] == 9
    assert results["CP201"]["level"] == "warning"
    assert the_run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == project.as_uri() + "/"
    assert the_run["invocations"][0]["exitCode"] == 1
    assert "suppressions" not in soft


def test_clean_sarif_has_no_results(project: Path, capsys: Any) -> None:
    (project / "clean.yaml").write_text("version: 1\ndefaults:\n  timeout: {soft: 1m, hard: 2m}\n")
    code, out, _ = run(capsys, "check", "clean.yaml", "--format", "sarif")
    assert code == 0
    assert json.loads(out)["runs"][0]["results"] == []


def test_trailing_comment_suppresses_that_line_only(project: Path, capsys: Any) -> None:
    text = POLICY.replace("max_retries: null", "max_retries: null  # celery-policy: ignore[CP201]")
    (project / "policy.yaml").write_text(text)
    code, out, _ = run(capsys, "check", "policy.yaml", "--format", "json")
    assert code == 1  # CP103 is still an error
    found = codes_by_line(out)
    assert ("CP201", 5) not in found
    assert ("CP103", 9) in found
    data = json.loads(out)
    assert [(f["code"], f["line"]) for f in data["suppressed"]] == [("CP201", 5)]
    assert data["summary"]["suppressed"] == 1


def test_comment_on_its_own_line_suppresses_the_next_line_by_code_or_name(project: Path, capsys: Any) -> None:
    text = POLICY.replace("    timeout:\n", "    # celery-policy: ignore[soft-not-below-hard, CP2]\n    timeout:\n")
    text = text.replace("      soft: 6m\n", "      # celery-policy: ignore[CP103]\n      soft: 6m\n")
    (project / "policy.yaml").write_text(text)
    code, out, _ = run(capsys, "check", "policy.yaml")
    assert code == 0  # only the warnings remain
    assert "CP103" not in out
    assert "CP201" in out
    assert "(1 suppressed)" in out


def test_suppressed_error_shows_in_sarif_as_suppressed(project: Path, capsys: Any) -> None:
    text = POLICY.replace("      soft: 6m\n", "      soft: 6m  # celery-policy: ignore[CP103]\n")
    (project / "policy.yaml").write_text(text)
    code, out, _ = run(capsys, "check", "policy.yaml", "--format", "sarif")
    assert code == 0
    results = {r["ruleId"]: r for r in json.loads(out)["runs"][0]["results"]}
    assert results["CP103"]["suppressions"][0]["kind"] == "inSource"
    assert "suppressions" not in results["CP201"]


def test_suppression_naming_no_rule_is_reported_and_suppresses_nothing(project: Path, capsys: Any) -> None:
    text = POLICY.replace("      soft: 6m\n", "      soft: 6m  # celery-policy: ignore[CP999]\n")
    (project / "policy.yaml").write_text(text)
    code, out, err = run(capsys, "check", "policy.yaml")
    assert code == 1
    assert "CP103" in out
    assert "policy.yaml:9: suppression comment names 'CP999'; it suppresses nothing" in err


def test_pyproject_supplies_files_env_select_ignore_and_strict(
    project: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "policies").mkdir()
    (project / "policies" / "p.yaml").write_text(
        POLICY + "environments:\n  production:\n    tasks:\n      reports.build: {timeout: {soft: 4m}}\n"
    )
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.celery-policy]\nfiles = ["policies/p.yaml"]\nenv = "production"\n'
        'ignore = ["CP206"]\nstrict = true\n'
    )
    sub = project / "src" / "deep"
    sub.mkdir(parents=True)
    code, out, _ = run(capsys, "check", "--format", "json")
    data = json.loads(out)
    assert data["files"] == ["policies/p.yaml"]
    assert data["envs"] == ["production"]
    assert {f["code"] for f in data["findings"]} == {"CP201"}  # CP103 fixed by the overlay, CP206 ignored
    assert code == 1  # strict: the warning fails
    # found by walking up from a subdirectory; the file path is shown relative to the working directory
    monkeypatch.chdir(sub)
    code, out, _ = run(capsys, "check", "--format", "json")
    monkeypatch.chdir(project)
    assert json.loads(out)["files"] == ["../../policies/p.yaml"]
    # the command line wins: files and --all-envs replace, --ignore adds, --select replaces
    code, out, _ = run(capsys, "check", "policy.yaml", "--all-envs", "--ignore", "CP201", "--format", "json")
    data = json.loads(out)
    assert data["files"] == ["policy.yaml"]
    assert data["envs"] == [None]
    assert {f["code"] for f in data["findings"]} == {"CP103"}
    code, out, _ = run(capsys, "check", "--all-envs", "--select", "CP206", "--format", "json")
    assert json.loads(out)["envs"] == [None, "production"]
    assert {f["code"] for f in json.loads(out)["findings"]} == set()  # selected, then ignored by the config


def test_pyproject_without_the_table_is_skipped_and_a_bad_key_is_a_usage_error(
    project: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "pyproject.toml").write_text('[tool.celery-policy]\nfiles = ["policy.yaml"]\n')
    inner = project / "inner"
    inner.mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    (inner / "policy.yaml").write_text("version: 1\n")
    monkeypatch.chdir(inner)
    code, out, _ = run(capsys, "check", "--format", "json")
    monkeypatch.chdir(project)
    assert json.loads(out)["files"] == ["../policy.yaml"]  # the inner pyproject.toml has no table
    (project / "pyproject.toml").write_text('[tool.celery-policy]\nignores = ["CP201"]\n')
    code, _, err = run(capsys, "check", "policy.yaml")
    assert code == 2
    assert "unknown key 'ignores'; did you mean 'ignore'?" in err
    (project / "pyproject.toml").write_text('[tool.celery-policy]\nselect = ["CP9"]\n')
    code, _, err = run(capsys, "check", "policy.yaml")
    assert code == 2
    assert "unknown rule or prefix 'CP9'" in err


def test_without_files_or_config_the_default_path_is_checked(project: Path, capsys: Any) -> None:
    code, _, err = run(capsys, "check")
    assert code == 2
    assert "policies/celery-policy.yaml" in err


def test_pyproject_app_turns_on_the_app_cross_checks(tmp_path: Path) -> None:
    """``app = "..."`` in ``[tool.celery-policy]`` is ``check --app``: the real CLI imports the app from the
    project directory and reports a task name the app does not register (CP301); without the key it cannot."""
    package = tmp_path / "claimsapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celery.py").write_text(
        'from celery import Celery\n\napp = Celery("claimsapp", broker="memory://")\n\n\n'
        '@app.task(name="orders.charge")\ndef charge() -> None:\n    pass\n'
    )
    (tmp_path / "policy.yaml").write_text("version: 1\ntasks:\n  orders.chrage: {retry: {max_retries: 1}}\n")
    table = '[tool.celery-policy]\nfiles = ["policy.yaml"]\n'
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_POLICY")}

    def check(pyproject: str) -> list[dict[str, Any]]:
        (tmp_path / "pyproject.toml").write_text(pyproject)
        done = subprocess.run(
            [sys.executable, "-m", "celery_policy.cli", "check", "--format", "json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        return [f for f in json.loads(done.stdout)["findings"] if f["code"] == "CP301"]

    (found,) = check(table + 'app = "claimsapp.celery"\n')
    assert found["message"] == "unknown task 'orders.chrage'"
    assert "did you mean 'orders.charge'?" in found["hint"]
    assert check(table) == []
