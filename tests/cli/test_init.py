"""`celery-policy init --app`: a policy equivalent to an existing app's decorators and app.conf.

The app below is a real Celery project written to a temporary directory; the real
`celery-policy` command reads it, `check --app` accepts the result, and the same app
with the generated policy installed ends up with the task attributes it had before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

BIN = Path(sys.executable).parent

CELERY_MODULE = """\
import os

from celery import Celery
from kombu import Queue

import celery_policy

app = Celery("legacy", broker="redis://localhost:1/0", include=["legacy.tasks"], task_cls=celery_policy.PolicyTask)
app.conf.update(
    task_acks_late=True,
    task_time_limit=300,
    task_soft_time_limit=240,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    result_expires=7200,
    worker_concurrency=3,
    worker_max_tasks_per_child=100,
    broker_transport_options={"visibility_timeout": 7200},
    task_queues=[Queue("celery"), Queue("reports")],
    task_annotations={"*": {"rate_limit": "50/s"}, "legacy.sync": {"max_retries": 1}},
    task_routes={"legacy.reports.*": {"queue": "reports"}},
)
if os.environ.get("LEGACY_POLICY"):
    celery_policy.install(app, os.environ["LEGACY_POLICY"])
"""

TASKS_MODULE = """\
from legacy.celery import app
from legacy.errors import Declined, GatewayTimeout


@app.task(name="legacy.charge", autoretry_for=(ConnectionError, GatewayTimeout), dont_autoretry_for=(Declined,),
          retry_backoff=2, retry_backoff_max=60, retry_jitter=False, max_retries=5,
          reject_on_worker_lost=True, time_limit=30, soft_time_limit=20)
def charge(order_id):
    return order_id


@app.task(name="legacy.notify", autoretry_for=(OSError,), retry_kwargs={"max_retries": 4, "countdown": 10})
def notify(user_id):
    return user_id


@app.task(name="legacy.reports.build", expires=3600)
def build():
    return "built"


@app.task(name="legacy.sync")
def sync():
    return "synced"


@app.task(name="legacy.plain")
def plain():
    return "plain"
"""

ERRORS_MODULE = """\
class GatewayTimeout(Exception):
    pass


class Declined(ValueError):
    pass
"""

ATTRIBUTES = """\
import json
from legacy.celery import app
app.loader.import_default_modules()
app.finalize(auto=True)
keys = ["time_limit", "soft_time_limit", "acks_late", "reject_on_worker_lost", "rate_limit", "expires"]
def cap(cls):  # autoretry's cap: retry_kwargs["max_retries"] beats the max_retries attribute
    return (getattr(cls, "retry_kwargs", None) or {}).get("max_retries", cls.max_retries)
conf = {"time_limit": app.conf.task_time_limit, "soft_time_limit": app.conf.task_soft_time_limit}
def value(cls, k):  # what the worker applies: the task's own limit, else the app-wide setting (as Celery does)
    own = getattr(cls, k, None)
    return conf.get(k) if own is None else own
print(json.dumps({name: {**{k: value(type(t), k) for k in keys}, "cap": cap(type(t))}
                  for name, t in app.tasks.items() if name.startswith("legacy.")}, sort_keys=True))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    package = tmp_path / "legacy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celery.py").write_text(CELERY_MODULE)
    (package / "tasks.py").write_text(TASKS_MODULE)
    (package / "errors.py").write_text(ERRORS_MODULE)
    return tmp_path


def run(project: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_POLICY", "LEGACY_"))}
    environ.update(env or {})
    return subprocess.run(argv, cwd=project, env=environ, capture_output=True, text=True, timeout=60, check=False)


def generated(project: Path) -> dict[str, Any]:
    done = run(project, str(BIN / "celery-policy"), "init", "--app", "legacy.celery", "-o", "policies/policy.yaml")
    assert done.returncode == 0, done.stderr
    assert "next: celery-policy check policies/policy.yaml --app legacy.celery" in done.stderr
    data: dict[str, Any] = yaml.safe_load((project / "policies" / "policy.yaml").read_text())
    return data


def test_init_translates_decorators_annotations_routes_and_conf(project: Path) -> None:
    policy = generated(project)
    assert policy["version"] == 1
    defaults = policy["defaults"]
    assert defaults["ack"] == {"late": True}
    assert defaults["timeout"] == {"soft": "4m", "hard": "5m"}
    assert defaults["rate_limit"] == "50/s"  # task_annotations['*']
    assert policy["worker"] == {
        "prefetch_multiplier": 1,
        "track_started": True,
        "result_expires": "2h",
        "concurrency": 3,
        "max_tasks_per_child": 100,
        "visibility_timeout": "2h",
    }
    tasks = policy["tasks"]
    charge = tasks["legacy.charge"]
    assert charge["retry"]["on"] == ["builtins.ConnectionError", "legacy.errors.GatewayTimeout"]
    assert charge["retry"]["never"] == ["legacy.errors.Declined"]
    assert charge["retry"]["max_retries"] == 5
    # Celery: countdown = min(60, 2 * 2 ** retries), no jitter
    assert charge["retry"]["backoff"] == {"initial": "2s", "factor": 2, "max": "1m", "jitter": "none"}
    assert charge["timeout"] == {"soft": "20s", "hard": "30s"}
    assert charge["ack"] == {"reject_on_worker_lost": True}
    notify = tasks["legacy.notify"]["retry"]
    assert notify["max_retries"] == 4
    assert notify["backoff"] == {"initial": "10s", "factor": 1, "max": "10s", "jitter": "none"}  # a fixed countdown
    assert tasks["legacy.reports.build"]["timeout"] == {"expires": "1h"}
    assert tasks["legacy.reports.*"]["route"] == {"queue": "reports"}
    # task_annotations['legacy.sync'] max_retries=1 without autoretry_for: only the task's own self.retry()
    # would use it, and retry.max_retries does not change that cap, so it is left where it is, with a comment
    assert "legacy.sync" not in tasks
    assert "legacy.plain" not in tasks
    text = (project / "policies" / "policy.yaml").read_text()
    assert "# max_retries=1: not policy, keep them where they are; without autoretry_for" in text
    assert "autoretry_for=(ConnectionError, GatewayTimeout)" in text
    assert "# from task_routes['legacy.reports.*'] = {'queue': 'reports'}" in text
    assert "# 1 task(s) set no failure-handling options: legacy.plain" in text


def test_the_generated_policy_passes_check_app_which_lists_the_decorator_options_to_delete(project: Path) -> None:
    generated(project)
    done = run(
        project,
        str(BIN / "celery-policy"),
        "check",
        "policies/policy.yaml",
        "--app",
        "legacy.celery",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    findings = json.loads(done.stdout)["findings"]
    assert [f for f in findings if f["severity"] == "error"] == []
    # one finding per task, listing every option the policy replaces, each by its whole name
    charge = [f for f in findings if f["code"] == "CP304" and "task 'legacy.charge' sets" in f["message"]]
    assert len(charge) == 1, charge
    for option in (
        "autoretry_for=(ConnectionError, GatewayTimeout)",
        "dont_autoretry_for=(Declined,)",
        "max_retries=5",
        "reject_on_worker_lost=True",
        "retry_backoff=2",
        "retry_backoff_max=60",
        "retry_jitter=False",
        "soft_time_limit=20",
        "time_limit=30",
    ):
        assert option in charge[0]["message"], (option, charge[0]["message"])
    for key in ("retry", "timeout.soft", "timeout.hard", "ack.reject_on_worker_lost"):
        assert f'tasks."legacy.charge".{key}' in charge[0]["message"]
    # the app.conf settings the policy now sets, read as the app set them (before install() changed them)
    settings = [f["message"] for f in findings if f["code"] == "CP304" and "app.conf settings" in f["message"]]
    assert len(settings) == 1, findings
    for setting in (
        "task_acks_late=True",
        "task_soft_time_limit=240",
        "task_time_limit=300",
        "worker_prefetch_multiplier=1",
    ):
        assert setting in settings[0], settings


def test_installing_the_generated_policy_keeps_the_task_attributes(project: Path) -> None:
    before = run(project, sys.executable, "-c", ATTRIBUTES)
    assert before.returncode == 0, before.stderr
    generated(project)
    after = run(project, sys.executable, "-c", ATTRIBUTES, env={"LEGACY_POLICY": "policies/policy.yaml"})
    assert after.returncode == 0, after.stderr
    was = json.loads(before.stdout.strip().splitlines()[-1])
    now = json.loads(after.stdout.strip().splitlines()[-1])
    assert now == was


def test_init_on_an_app_that_already_installs_a_policy_reads_the_apps_own_settings(project: Path) -> None:
    generated(project)
    first = (project / "policies" / "policy.yaml").read_text()
    installed = project / "policies" / "installed.yaml"
    installed.write_text(
        "version: 1\n"
        "defaults: {timeout: {soft: 1m, hard: 2m}, ack: {late: false}}\n"
        "worker: {prefetch_multiplier: 8, track_started: false, result_expires: 5m, concurrency: 9}\n"
    )
    done = run(
        project,
        str(BIN / "celery-policy"),
        "init",
        "--app",
        "legacy.celery",
        "-o",
        "policies/again.yaml",
        env={"LEGACY_POLICY": str(installed)},
    )
    assert done.returncode == 0, done.stderr
    # the installed policy's values (1m/2m, prefetch 8, ...) are not taken for the app's own settings
    assert (project / "policies" / "again.yaml").read_text() == first.replace(
        "policies/policy.yaml", "policies/again.yaml"
    )


def test_init_with_force_overwrites_an_existing_file(project: Path) -> None:
    """`--force` replaces a file that is already there with the policy read from the app."""
    generated(project)
    target = project / "policies" / "policy.yaml"
    fresh = target.read_text()
    target.write_text("version: 1\n# a stale policy someone wrote by hand\n")
    forced = run(
        project, str(BIN / "celery-policy"), "init", "--app", "legacy.celery", "-o", "policies/policy.yaml", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert target.read_text() == fresh


def test_init_refuses_to_overwrite_and_reports_an_app_that_does_not_import(project: Path) -> None:
    generated(project)
    again = run(project, str(BIN / "celery-policy"), "init", "--app", "legacy.celery", "-o", "policies/policy.yaml")
    assert again.returncode == 2
    assert "exists; pass --force" in again.stderr
    missing = run(project, str(BIN / "celery-policy"), "init", "--app", "nosuch.celery")
    assert missing.returncode == 2
    assert "cannot import Celery app 'nosuch.celery'" in missing.stderr
    to_stdout = run(project, str(BIN / "celery-policy"), "init", "--app", "legacy.celery")
    assert to_stdout.returncode == 0
    assert yaml.safe_load(to_stdout.stdout)["tasks"]["legacy.notify"]["retry"]["max_retries"] == 4
