"""`[tool.celery-policy]` in pyproject.toml: per-rule severity, and the policy files and environment it names
applying to every command that reads policy files (explain, diff, check --diff, dlq), not only check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from celery_policy.cli import main

# CP201 (warning) at line 5, CP202 (warning) at line 6, CP103 (error) at line 9.
POLICY = """\
version: 1
defaults:
  retry:
    on: [builtins.TimeoutError]
    max_retries: null
    backoff: {initial: 0}
tasks:
  reports.build:
    timeout: {soft: 6m, hard: 5m}
environments:
  development:
    defaults: {retry: {max_retries: 0}}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def findings(out: str) -> dict[str, str]:
    return {f["code"]: f["severity"] for f in json.loads(out)["findings"]}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CELERY_POLICY_FILE", raising=False)
    monkeypatch.delenv("CELERY_POLICY_ENV", raising=False)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(POLICY)
    return tmp_path


def configure(project: Path, body: str) -> None:
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.celery-policy]\n' + body)


def test_severity_raises_lowers_and_turns_off_rules_the_most_specific_selector_winning(
    project: Path, capsys: Any
) -> None:
    code, out, _ = run(capsys, "check", "policies/p.yaml", "--format", "json")
    assert findings(out) == {"CP201": "warning", "CP202": "warning", "CP103": "error", "CP206": "warning"}
    levels = 'CP2 = "error", retry-without-backoff = "warning", CP206 = "off", CP103 = "warning"'
    configure(project, f"severity = {{{levels}}}\n")
    code, out, _ = run(capsys, "check", "policies/p.yaml", "--format", "json")
    assert findings(out) == {"CP201": "error", "CP202": "warning", "CP103": "warning"}
    assert code == 1  # CP201 is an error now
    configure(project, 'severity = {CP201 = "off", CP103 = "warning"}\n')
    code, out, _ = run(capsys, "check", "policies/p.yaml", "--format", "json")
    assert findings(out) == {"CP202": "warning", "CP103": "warning", "CP206": "warning"}
    assert (code, json.loads(out)["summary"]["errors"]) == (0, 0)


def test_severity_values_and_selectors_are_checked_and_file_errors_stay_errors(project: Path, capsys: Any) -> None:
    configure(project, 'severity = {CP205 = "fatal"}\n')
    code, _, err = run(capsys, "check", "policies/p.yaml")
    assert code == 2
    assert 'severity of \'CP205\' must be one of "error", "warning", "off", got \'fatal\'' in err
    configure(project, 'severity = {CP999 = "off"}\n')
    code, _, err = run(capsys, "check", "policies/p.yaml")
    assert (code, "unknown rule or prefix 'CP999'" in err) == (2, True)
    configure(project, 'severity = {CP101 = "warning"}\n')
    code, _, err = run(capsys, "check", "policies/p.yaml")
    assert code == 2
    assert "a worker refuses such a file; it stays an error" in err


def test_explain_reads_the_files_and_environment_of_the_table(project: Path, capsys: Any) -> None:
    configure(project, 'files = ["policies/p.yaml"]\nenv = "development"\n')
    code, out, err = run(capsys, "explain", "reports.build")
    assert code == 0, err
    assert "files: policies/p.yaml" in out
    assert "env: development" in out
    assert "retry.max_retries          0" in out
    code, out, _ = run(capsys, "explain", "reports.build", "--env", "nope")  # the command line wins
    assert code == 1


def test_a_bad_table_is_a_usage_error_for_explain(project: Path, capsys: Any) -> None:
    configure(project, 'files = "policies/p.yaml"\nenv = 3\n')
    code, _, err = run(capsys, "explain", "reports.build")
    assert code == 2
    assert "celery-policy explain: error:" in err
    assert "'env' must be a string" in err


def test_diff_and_check_diff_use_the_tables_environment_and_files(project: Path, capsys: Any) -> None:
    other = POLICY.replace("max_retries: 0", "max_retries: 1")
    (project / "policies" / "q.yaml").write_text(other)
    code, out, _ = run(capsys, "diff", "policies/p.yaml", "policies/q.yaml")
    assert code == 0, out  # the base files do not differ
    configure(project, 'files = ["policies/p.yaml"]\nenv = "development"\n')
    code, out, _ = run(capsys, "diff", "policies/p.yaml", "policies/q.yaml")
    assert code == 1
    assert "(env development)" in out
    code, out, _ = run(capsys, "check", "--env", "development", "--diff", "development")
    assert "--- policies/p.yaml (env development)" in out


def test_dlq_takes_the_store_from_the_policy_the_table_names(project: Path, capsys: Any) -> None:
    (project / "policies" / "p.yaml").write_text('version: 1\ndead_letter_store: {url: "redis://127.0.0.1:1/0"}\n')
    code, _, err = run(capsys, "dlq", "list")
    assert "no dead-letter store" in err  # nothing names the store
    configure(project, 'files = ["policies/p.yaml"]\n')
    code, _, err = run(capsys, "dlq", "list")
    assert code == 3
    assert "redis://127.0.0.1:1/0" in err


def test_consumer_timeout_from_the_table_for_rabbitmq_policies(project: Path, capsys: Any) -> None:
    """The broker's consumer_timeout cannot be read by a client; the project says it (the policy's own wins)."""
    policy = (
        "version: 1\ndefaults:\n  retry: {on: [builtins.TimeoutError], max_retries: 20, backoff: {max: 40m}}\n"
        "  route: {queue_type: quorum}\n  timeout: {soft: 5m, hard: 6m}\n"
    )
    (project / "policies" / "p.yaml").write_text(policy)
    code, out, _ = run(capsys, "check", "policies/p.yaml", "--format", "json")
    [hit] = [f for f in json.loads(out)["findings"] if f["code"] == "CP220"]
    assert "consumer_timeout 30m (RabbitMQ's default)" in hit["message"]
    configure(project, 'consumer-timeout = "1h"\n')
    code, out, _ = run(capsys, "check", "policies/p.yaml", "--format", "json")
    assert [f for f in json.loads(out)["findings"] if f["code"] == "CP220"] == []
    configure(project, 'consumer-timeout = "20m"\n')
    code, out, _ = run(capsys, "check", "policies/p.yaml", "--format", "json")
    [hit] = [f for f in json.loads(out)["findings"] if f["code"] == "CP220"]
    assert "consumer_timeout 20m (consumer-timeout in [tool.celery-policy])" in hit["message"]
    (project / "policies" / "p.yaml").write_text(policy + "worker: {consumer_timeout: 2h}\n")
    code, out, _ = run(capsys, "check", "policies/p.yaml", "--format", "json")
    assert [f for f in json.loads(out)["findings"] if f["code"] == "CP220"] == []
    configure(project, 'consumer-timeout = "soon"\n')
    code, _, err = run(capsys, "check", "policies/p.yaml")
    assert code == 2
    assert "'consumer-timeout' must be a duration" in err
