"""One validation for ``check`` and boot: every error a ``check`` without ``--app`` reports stops ``install()``.

The cases are the lint rule fixtures (tests/lint/fixtures/CPxxx.yaml): every
failing case of every error-severity rule that needs no app must make
``install()`` (or the first task binding, for the imports it defers) raise
with that rule's code, and one failing case per rule must stop a real
``celery worker`` with the rule's message printed before Celery's traceback.
The rules are read from the registry, so a rule added later is covered
without touching this file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from celery import Celery
from support.servers import REPO_ROOT, ProcessStartError, RedisServer, WorkerProcess

import celery_policy
import celery_policy.lint.rules
from celery_policy.errors import PolicyError
from celery_policy.lint.registry import RULES

sys.path.insert(0, str(REPO_ROOT / "tests" / "lint"))
from _lintkit import APPS, Case, all_cases

BOOT_RULES = sorted(code for code, rule in RULES.items() if rule.severity == "error" and not rule.needs_app)
CASES = [c for c in all_cases() if c.kind == "fail" and c.code in BOOT_RULES and c.app is None]


def _envs(case: Case, policy: Path) -> list[str | None]:
    """The environments a case's ``check`` arguments look at (``--all-envs``: the base and every one)."""
    if "--env" in case.args:
        return [case.args[case.args.index("--env") + 1]]
    if "--all-envs" in case.args:
        import yaml

        try:
            data = yaml.safe_load(policy.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            return [None]
        envs = data.get("environments") if isinstance(data, dict) else None
        return [None, *(str(e) for e in envs)] if isinstance(envs, dict) else [None]
    return [None]


def _boot_error(policy: Path, env: str | None) -> PolicyError | None:
    app = Celery("boot-gate", broker="memory://", backend="cache+memory://")

    @app.task(name="boot.noop", shared=False)
    def noop() -> None:
        return None

    try:
        celery_policy.install(app, policy, env=env)
        app.finalize()  # exception classes and hooks are imported at the first binding
    except PolicyError as exc:
        return exc
    finally:
        app.close()
    return None


def test_every_error_rule_without_app_has_a_failing_fixture_to_boot_on() -> None:
    covered = {c.code for c in CASES}
    assert BOOT_RULES, "no error-severity rule found in the registry"
    assert set(BOOT_RULES) == covered, f"rules with no failing fixture case: {sorted(set(BOOT_RULES) - covered)}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_install_refuses_every_failing_fixture_of_an_error_rule(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(APPS)  # the fixtures' exception classes import from the lint test apps
    monkeypatch.syspath_prepend(str(APPS))
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(case.policy.encode("utf-8", "surrogateescape"))
    errors = [e for e in (_boot_error(policy, env) for env in _envs(case, policy)) if e is not None]
    assert errors, f"{case.id}: install() accepted a policy that check rejects with {case.code}"
    codes = {d.code for e in errors for d in e.diagnostics}
    assert case.code in codes, (case.id, [str(e) for e in errors])
    for needle in case.extra.get("messages", []):
        assert any(needle in str(e) for e in errors), (needle, [str(e) for e in errors])


def _one_case_per_rule() -> list[Case]:
    chosen: dict[str, Case] = {}
    for case in CASES:
        best = chosen.get(case.code)
        if best is None or (best.args and not case.args):
            chosen[case.code] = case
    return [chosen[code] for code in sorted(chosen)]


WORKER_CASES = _one_case_per_rule()


@pytest.mark.worker
@pytest.mark.parametrize("case", WORKER_CASES, ids=[c.code for c in WORKER_CASES])
def test_a_worker_stops_at_boot_with_the_rules_message_first(
    case: Case, redis_server: RedisServer, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(case.policy.encode("utf-8", "surrogateescape"))
    url = redis_server.url_for(7)
    env = {"BOOT_BROKER_URL": url, "CELERY_POLICY_FILE": str(policy)}
    envs = _envs(case, policy)
    if envs != [None]:
        env["CELERY_POLICY_ENV"] = str(envs[-1])
    worker = WorkerProcess(
        "tests.support.apps.boot.bootapp",
        log_path=tmp_path / "worker.log",
        env=env,
        cwd=APPS,
        pythonpath=(REPO_ROOT, APPS),
        ready_timeout=30,
    )
    with pytest.raises(ProcessStartError, match="exited with code"):
        worker.start()
    assert worker.returncode not in (None, 0)
    log = worker.log_text()
    located = re.search(rf"^{re.escape(str(policy))}:\d+:\d+: {case.code} error: ", log, re.MULTILINE)
    assert located, log[-3000:]
    # the finding comes before Celery's usage banner and traceback
    assert "celery-policy: the policy stops the worker's boot" in log[: located.start()]
    for marker in ("Traceback", "Usage: celery"):
        if marker in log:
            assert located.start() < log.index(marker), log[-3000:]
    for needle in case.extra.get("messages", []):
        assert needle in log
    assert " ready." not in log
    worker.stop()
