"""``celery-policy explain``: full output and exit code against files in tests/cli/expected/.

The policies are in tests/cli/fixtures/explain/; tests run from that directory so
paths print as written. To rewrite the expected files after an intended change
of output, run with ``CELERY_POLICY_UPDATE_EXPECTED=1`` and read the diff.

With that variable set the tests write whatever the command prints and so pass by
construction: they check nothing in that run. The rewritten files are the check, so
review ``git diff tests/cli/expected/`` line by line before committing it, and run the
tests once more without the variable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from celery_policy.cli import main
from celery_policy.cli.exit import FAILED, OK, USAGE

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "explain"
EXPECTED = HERE / "expected"
UPDATE = os.environ.get("CELERY_POLICY_UPDATE_EXPECTED") == "1"


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    exit_code: int
    environ: dict[str, str] = field(default_factory=dict)
    expected: str = ""  # another case's expected stdout, when the output must be the same

    @property
    def stdout_file(self) -> Path:
        name = self.expected or self.name
        suffix = ".json" if "json" in self.argv else ".txt"
        return EXPECTED / f"explain_{name}{suffix}"

    @property
    def stderr_file(self) -> Path:
        return EXPECTED / f"explain_{self.name}.stderr.txt"


CASES = [
    Case("exact_task", ["explain", "orders.charge", "--file", "shop.yaml"], OK),
    Case("production", ["explain", "orders.charge", "--file", "shop.yaml", "--env", "production"], OK),
    Case(
        "production_json",
        ["explain", "orders.charge", "--file", "shop.yaml", "--env", "production", "--format", "json"],
        OK,
    ),
    Case("unmatched_task", ["explain", "billing.invoice", "--file", "shop.yaml"], OK),
    Case("no_retries", ["explain", "billing.invoice", "--file", "shop.yaml", "--env", "development"], OK),
    Case("two_files", ["explain", "reports.daily", "--file", "shop.yaml", "--file", "team.yaml"], OK),
    Case("uncapped", ["explain", "anything", "--file", "uncapped.yaml"], OK),
    Case("uncapped_json", ["explain", "anything", "--file", "uncapped.yaml", "--format", "json"], OK),
    Case("no_retries_at_all", ["explain", "anything", "--file", "uncapped.yaml", "--env", "strict"], OK),
    Case(
        "from_environment_variables",
        ["explain", "orders.charge"],
        OK,
        environ={"CELERY_POLICY_FILE": "shop.yaml", "CELERY_POLICY_ENV": "production"},
        expected="production",
    ),
    Case(
        "env_option_beats_variable",
        ["explain", "orders.charge", "--file", "shop.yaml", "--env", "production"],
        OK,
        environ={"CELERY_POLICY_ENV": "development"},
        expected="production",
    ),
    Case("invalid_file", ["explain", "x", "--file", "invalid.yaml"], FAILED),
    Case("pattern_conflict", ["explain", "orders.charge", "--file", "conflict.yaml"], FAILED),
    Case("unknown_env", ["explain", "orders.charge", "--file", "shop.yaml", "--env", "prodution"], FAILED),
    Case("missing_file", ["explain", "orders.charge", "--file", "missing.yaml"], USAGE),
    Case("no_default_file", ["explain", "orders.charge"], USAGE),
]


@pytest.fixture
def in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    monkeypatch.delenv("CELERY_POLICY_FILE", raising=False)
    monkeypatch.delenv("CELERY_POLICY_ENV", raising=False)


def check_against(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} is missing; run with CELERY_POLICY_UPDATE_EXPECTED=1 and review it"
    assert actual == path.read_text(encoding="utf-8")


@pytest.mark.usefixtures("in_fixtures")
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_explain_output_and_exit_code(
    case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in case.environ.items():
        monkeypatch.setenv(key, value)
    code = main(case.argv)
    out, err = capsys.readouterr()
    assert code == case.exit_code, err
    if case.exit_code == OK:
        assert err == ""
        if case.expected:
            assert out == case.stdout_file.read_text(encoding="utf-8")
        else:
            check_against(case.stdout_file, out)
    else:
        assert out == ""
        check_against(case.stderr_file, err)


@pytest.mark.usefixtures("in_fixtures")
def test_json_output_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "orders.charge", "--file", "shop.yaml", "--env", "production", "--format", "json"]) == OK
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"task", "env", "files", "overlays", "layers", "fields", "schedules"}
    assert data["overlays"] == ["staging", "production"]
    assert [layer["layer"] for layer in data["layers"]] == [
        "builtin",
        "defaults",
        'tasks."orders.*"',
        'tasks."orders.charge"',
    ]
    fields = {f["path"]: f for f in data["fields"]}
    soft = fields["timeout.soft"]
    assert (soft["value"], soft["display"], soft["duration"]) == (90.0, "1m30s", True)
    assert soft["source"] == {
        "layer": 'tasks."orders.charge"',
        "overlay": "env:production",
        "location": {"file": "shop.yaml", "line": 56, "column": 25},
    }
    assert fields["ack.on_failure_or_timeout"]["source"] == {"layer": "builtin", "overlay": "base", "location": None}
    task, rate_limited, lookup = data["schedules"]
    assert set(task) == {
        "name",
        "source",
        "on",
        "max_retries",
        "unknown",
        "unknown_max_retries",
        "backoff",
        "delay_from",
        "deadline",
        "rows",
        "omitted",
        "uncapped",
        "deadline_passed_at",
        "self_retry",
        "decided_by_policy",
    }
    assert (task["self_retry"], task["decided_by_policy"]) == ("task", True)
    assert "self_retry" not in rate_limited
    assert (task["max_retries"], task["omitted"], len(task["rows"])) == (15, 3, 12)
    assert task["rows"][-1]["retry"] == 15
    assert task["source"] is None
    assert rate_limited["source"] == {
        "layer": 'tasks."orders.charge"',
        "overlay": "base",
        "location": {"file": "shop.yaml", "line": 35, "column": 11},
    }
    assert lookup["source"]["location"]["line"] == 38
    assert rate_limited["delay_from"] == "retry_after"
    assert rate_limited["deadline_passed_at"] == 13
    assert lookup["backoff"] == {"initial": 10.0, "factor": 2.0, "max": 300.0, "jitter": "none"}
    assert [row["delay_max"] for row in lookup["rows"]] == [10.0, 20.0, 40.0, 80.0]


@pytest.mark.usefixtures("in_fixtures")
def test_every_field_of_the_text_report_appears_in_the_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "orders.charge", "--file", "shop.yaml", "--format", "json"]) == OK
    data = json.loads(capsys.readouterr().out)
    assert main(["explain", "orders.charge", "--file", "shop.yaml"]) == OK
    text = capsys.readouterr().out
    for entry in data["fields"]:
        assert f"  {entry['path']} " in text
