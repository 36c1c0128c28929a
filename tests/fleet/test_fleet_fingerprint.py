"""Policy fingerprints, `celery-policy diff`, `check --diff` and the `policy_loaded` boot event.

Diff output is compared in full against tests/cli/expected/diff_*. The policies are in
tests/support/apps/fleet/diff/; tests run from there so paths print as written. To rewrite the
expected files after an intended change of output, run with
``CELERY_POLICY_UPDATE_EXPECTED=1`` and read the diff.

With that variable set the tests write whatever the command prints and so pass by
construction: they check nothing in that run. The rewritten files are the check, so
review ``git diff tests/cli/expected/`` line by line before committing it, and run the
tests once more without the variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog
from celery import Celery

import celery_policy
from celery_policy.cli import main
from celery_policy.cli.exit import FAILED, OK, USAGE
from celery_policy.fleet import DEFAULTS, diff, snapshot
from celery_policy.resolve import load
from celery_policy.runtime.control import policy_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DIFF = ROOT / "tests" / "support" / "apps" / "fleet" / "diff"
EXPECTED = ROOT / "tests" / "cli" / "expected"
UPDATE = os.environ.get("CELERY_POLICY_UPDATE_EXPECTED") == "1"
TASKS = ["orders.charge", "orders.refund", "reports.daily", "emails.send"]


def _fingerprint(name: str, env: str | None = None) -> str:
    return snapshot(load(DIFF / name, env=env, check_imports=False), TASKS).fingerprint


def test_key_order_formatting_group_names_and_duration_spelling_keep_the_fingerprint() -> None:
    for env in (None, "staging", "production"):
        assert _fingerprint("old.yaml", env) == _fingerprint("reordered.yaml", env)


def test_a_changed_value_changes_the_fingerprint(tmp_path: Path) -> None:
    changed = tmp_path / "changed.yaml"
    changed.write_text((DIFF / "old.yaml").read_text().replace("retry: {max_retries: 8}", "retry: {max_retries: 9}"))
    assert snapshot(load(changed, check_imports=False), TASKS).fingerprint != _fingerprint("old.yaml")
    assert _fingerprint("old.yaml") != _fingerprint("new.yaml")


def test_the_environment_changes_the_fingerprint_even_when_its_overlay_changes_nothing(tmp_path: Path) -> None:
    noop = tmp_path / "noop.yaml"
    noop.write_text((DIFF / "old.yaml").read_text() + "  canary: {}\n")
    assert _fingerprint("old.yaml") != _fingerprint("old.yaml", "production")
    base = snapshot(load(noop, check_imports=False), TASKS)
    canary = snapshot(load(noop, env="canary", check_imports=False), TASKS)
    assert base.tasks == canary.tasks
    assert base.settings == canary.settings
    assert base.fingerprint != canary.fingerprint


def test_the_task_set_is_part_of_the_fingerprint() -> None:
    policy = load(DIFF / "old.yaml", check_imports=False)
    assert snapshot(policy, TASKS).fingerprint != snapshot(policy, TASKS[:2]).fingerprint
    assert snapshot(policy, TASKS).fingerprint == snapshot(policy, list(reversed(TASKS))).fingerprint


def test_a_snapshot_survives_the_json_round_trip_a_worker_reply_takes() -> None:
    from celery_policy.fleet import Snapshot

    original = snapshot(load(DIFF / "new.yaml", env="production", check_imports=False), TASKS, include_defaults=True)
    again = Snapshot.from_json(json.loads(json.dumps(original.to_json())))
    assert again.fingerprint == original.fingerprint
    assert diff(original, again) == []


def test_store_passwords_never_reach_snapshots() -> None:
    data = json.dumps(snapshot(load(DIFF / "new.yaml", check_imports=False), TASKS).to_json())
    assert "hunter2" not in data
    assert "redis://:***@store:6379/1" in data


def test_defaults_are_compared_as_their_own_section() -> None:
    old = snapshot(load(DIFF / "old.yaml", check_imports=False), [], include_defaults=True)
    new = snapshot(load(DIFF / "new.yaml", check_imports=False), [], include_defaults=True)
    changed = {(c.section, c.path) for c in diff(old, new)}
    assert (f"task:{DEFAULTS}", "retry.backoff.initial") in changed
    assert ("dead_letter_store", "url") in changed


# --- CLI output, in full ------------------------------------------------------------------------

CASES = [
    ("files", ["diff", "old.yaml", "new.yaml"], FAILED),
    ("files_json", ["diff", "old.yaml", "new.yaml", "--format", "json"], FAILED),
    ("same", ["diff", "old.yaml", "reordered.yaml", "--env", "production"], OK),
    ("envs", ["diff", "old.yaml", "old.yaml", "--old-env", "staging", "--new-env", "production"], FAILED),
    ("check_envs", ["check", "old.yaml", "--env", "production", "--diff", "staging"], OK),
]


@pytest.mark.parametrize(("name", "argv", "exit_code"), CASES, ids=[case[0] for case in CASES])
def test_diff_output(
    name: str, argv: list[str], exit_code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(DIFF)
    monkeypatch.delenv("CELERY_POLICY_FILE", raising=False)
    monkeypatch.delenv("CELERY_POLICY_ENV", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    code = main(argv)
    out, err = capsys.readouterr()
    expected = EXPECTED / f"diff_{name}{'.json' if 'json' in argv else '.txt'}"
    if UPDATE:
        expected.write_text(out)
    assert (code, err) == (exit_code, "")
    assert out == expected.read_text()


def test_diff_with_an_app_compares_exactly_its_registered_tasks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # never connected: only the tasks are read
    monkeypatch.setenv("CELERY_POLICY_FILE", "tests/support/apps/fleet/policy_v1.yaml")
    monkeypatch.setenv("NO_COLOR", "1")
    argv = [
        "diff",
        "tests/support/apps/fleet/policy_v1.yaml",
        "tests/support/apps/fleet/policy_v2.yaml",
        "--env",
        "production",
    ]
    code = main([*argv, "--app", "tests.support.apps.fleet.fleetapp"])
    out, err = capsys.readouterr()
    expected = EXPECTED / "diff_app.txt"
    if UPDATE:
        expected.write_text(out)
    assert (code, err) == (FAILED, "")
    assert out == expected.read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["diff", "old.yaml", "missing.yaml"], "celery-policy diff: error: no such policy file: missing.yaml\n"),
        (
            ["diff", "old.yaml", "new.yaml", "--env", "qa"],
            "celery-policy diff: error: unknown environment 'qa' in old.yaml (defined: staging, production)\n",
        ),
        (
            ["diff", "old.yaml", "new.yaml", "--app", "no_such_module_xyz"],
            "celery-policy diff: error: cannot import Celery app 'no_such_module_xyz': ",
        ),
    ],
)
def test_diff_usage_errors_exit_2(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(DIFF)
    assert main(argv) == USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message)


def test_check_diff_refuses_json_and_all_envs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(DIFF)
    assert main(["check", "old.yaml", "--diff", "staging", "--format", "json"]) == USAGE
    assert main(["check", "old.yaml", "--diff", "staging", "--all-envs"]) == USAGE
    assert "--diff needs text output" in capsys.readouterr().err


# --- the boot event and the control reply, in-process -------------------------------------------


def test_policy_loaded_event_and_policy_info_reply_carry_the_fingerprint_and_file_hashes() -> None:
    """In-process; the worker tests see the same event in a real worker's log."""
    import hashlib

    from celery_policy.runtime.control import boot_info, log_loaded

    app = Celery("booted", broker="memory://", task_cls=celery_policy.PolicyTask)

    @app.task(name="orders.charge", shared=False)  # type: ignore[untyped-decorator]
    def charge() -> None:
        return None

    with structlog.testing.capture_logs() as events:
        celery_policy.install(app, DIFF / "old.yaml", env="production")
        app.finalize()
    assert [event for event in events if event["event"] == "policy_loaded"] == []  # only workers log it
    info = boot_info(app)
    assert info is not None
    reply = policy_report(app, "w1@host")
    # Other test modules' shared tasks join every app finalized later in this process: compare over the task set.
    assert "orders.charge" in reply["tasks"]
    expected = snapshot(load(DIFF / "old.yaml", env="production", check_imports=False), reply["tasks"])
    files = [{"path": str(DIFF / "old.yaml"), "sha256": hashlib.sha256((DIFF / "old.yaml").read_bytes()).hexdigest()}]
    with structlog.testing.capture_logs() as events:
        log_loaded(info)
    assert events == [
        {
            "event": "policy_loaded",
            "log_level": "info",
            "fingerprint": expected.fingerprint,
            "env": "production",
            "files": files,
            "tasks": len(reply["tasks"]),
            "version": celery_policy.__version__,
        }
    ]
    assert (reply["fingerprint"], reply["hostname"], reply["env"], reply["files"]) == (
        expected.fingerprint,
        "w1@host",
        "production",
        files,
    )
    assert "snapshot" not in reply
    assert policy_report(app, "w1@host", detail=True)["snapshot"]["tasks"]["orders.charge"]["retry.max_retries"] == 8
