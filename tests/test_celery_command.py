"""`celery -A proj policy …`: the real `celery` command finds the sub-command through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _servers import RedisServer

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import RedisStreamStore

pytestmark = pytest.mark.compat  # Celery's CLI hands sub-commands their app differently by release

CELERY = str(Path(sys.executable).with_name("celery"))

APP = """\
import os

from celery import Celery

import celery_policy

app = Celery("proj", broker=os.environ.get("PROJ_BROKER", "memory://"), task_cls=celery_policy.PolicyTask)
app.conf.task_queues = None
app.conf.update(policy_file="policies/proj.yaml", policy_env=os.environ.get("PROJ_ENV") or None)


@app.task(name="proj.add")
def add(x, y):
    return x + y


@app.task(name="proj.charge", max_retries=7)
def charge(order_id):
    return order_id


celery_policy.install(app)
"""

POLICY = """\
version: 1
defaults:
  retry: {on: [builtins.TimeoutError], max_retries: 3}
  timeout: {soft: 1m, hard: 2m}
tasks:
  proj.charge:
    retry: {max_retries: 5}
  proj.refund:
    retry: {max_retries: 1}
environments:
  production:
    tasks:
      proj.add: {retry: {max_retries: 9}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "__init__.py").write_text("")
    (tmp_path / "proj" / "celery.py").write_text(APP)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "proj.yaml").write_text(POLICY)
    return tmp_path


def celery(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_POLICY", "PROJ_"))}
    environ.update(env or {})
    return subprocess.run(
        [CELERY, "-A", "proj", "policy", *args],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def json_out(stdout: str) -> dict[str, object]:
    """The JSON document (the app's own boot log lines may come before it)."""
    data: dict[str, object] = json.loads(stdout[stdout.index("\n{") + 1 :] if not stdout.startswith("{") else stdout)
    return data


def test_check_runs_the_app_cross_checks_on_the_apps_policy_file(project: Path) -> None:
    done = celery(project, "check", "--format", "json")
    assert done.returncode == 1, done.stderr
    data = json_out(done.stdout)
    assert data["files"] == ["policies/proj.yaml"]  # what the app's install() read, from app.conf
    found = {(f["code"], f["path"]) for f in data["findings"]}  # type: ignore[attr-defined]
    assert ("CP301", 'tasks."proj.refund"') in {(c, p) for c, p in found if c == "CP301"}
    assert any(code == "CP304" for code, _ in found)  # proj.charge's decorator max_retries=7 is overridden
    # the same through the standalone command needs --app
    standalone = subprocess.run(
        [str(Path(sys.executable).with_name("celery-policy")), "check", "policies/proj.yaml", "--format", "json"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert standalone.returncode == 0
    assert json.loads(standalone.stdout)["findings"] == []


def test_check_text_output_exit_code_and_usage_errors(project: Path) -> None:
    done = celery(project, "check", "--ignore", "CP3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no problems in 1 file" in done.stdout
    bad = celery(project, "check", "--select", "CP999")
    assert bad.returncode == 2
    assert "unknown rule or prefix 'CP999'" in bad.stderr


def test_check_and_explain_use_the_apps_environment(project: Path) -> None:
    done = celery(project, "check", "--format", "json", "--ignore", "CP3", env={"PROJ_ENV": "production"})
    assert done.returncode == 0, done.stderr
    assert json_out(done.stdout)["envs"] == ["production"]
    explained = celery(project, "explain", "proj.add", "--format", "json", env={"PROJ_ENV": "production"})
    assert explained.returncode == 0, explained.stderr
    data = json_out(explained.stdout)
    assert data["env"] == "production"
    assert data["files"] == ["policies/proj.yaml"]
    plain = celery(project, "explain", "proj.add")
    assert "env: (none)" in plain.stdout


def test_rules_and_schema(project: Path) -> None:
    done = celery(project, "rules", "CP301")
    assert done.returncode == 0
    assert "CP301 unknown-task" in done.stdout
    assert celery(project, "rules", "CP999").returncode == 2
    schema = celery(project, "schema")
    assert json_out(schema.stdout)["title"]


def test_dlq_list_reads_the_store_on_the_apps_broker(project: Path, clean_redis: RedisServer) -> None:
    store = RedisStreamStore(clean_redis.url, "celery-policy:dead", 1000)
    now = time.time()
    store.add(
        DeadLetter(
            task="proj.charge", task_id="t-1", args=[41], reason="permanent", exc_type="builtins.ValueError",
            exc_message="card declined", first_failure=now, last_failure=now,
        )
    )  # fmt: skip
    done = celery(project, "dlq", "list", "--format", "json", env={"PROJ_BROKER": clean_redis.url})
    assert done.returncode == 0, done.stderr
    records: list[dict[str, Any]] = json_out(done.stdout)["records"]
    assert [(r["task"], r["task_id"], r["reason"]) for r in records] == [("proj.charge", "t-1", "permanent")]
    stats = celery(project, "dlq", "stats", "--format", "json", env={"PROJ_BROKER": clean_redis.url})
    assert stats.returncode == 0, stats.stderr
    assert json_out(stats.stdout)["counts"] == [{"task": "proj.charge", "reason": "permanent", "count": 1}]
    replay = celery(project, "dlq", "replay", env={"PROJ_BROKER": clean_redis.url})
    assert replay.returncode == 2  # needs --yes without a terminal, as the standalone command
    dry = celery(project, "dlq", "replay", "--dry-run", env={"PROJ_BROKER": clean_redis.url})
    assert dry.returncode == 0, dry.stderr
    assert "1 would replay, 0 skipped, 0 failed" in dry.stdout
    purge = celery(project, "dlq", "purge", env={"PROJ_BROKER": clean_redis.url})
    assert purge.returncode == 2  # needs --yes, as the standalone command
    assert store.client.xlen("celery-policy:dead") == 1
