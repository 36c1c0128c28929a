"""Boot tells the truth about names: policy entries that match no registered task are reported.

A real worker of tests/support/apps/adopt/shopapp.py logs them once when it is
ready (file:line:col, "did you mean"); with ``CELERY_POLICY_STRICT_TASKS=1`` it
does not boot. ``explain`` with the app loaded (``--app`` or ``celery -A app
policy explain``) refuses an unknown task name instead of printing defaults.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.harness import log_events, make_worker
from support.servers import REPO_ROOT, ProcessStartError, RedisServer

SHOPAPP = "tests.support.apps.adopt.shopapp"
BIN = Path(sys.executable).parent
POLICY = """\
version: 1
tasks:
  shop.webhok:
    timeout: {hard: 1m}
  "shop.exprt*":
    timeout: {hard: 2m}
  "shop.export*":
    timeout: {hard: 3m}
  shop.sync:
    timeout: {hard: 4m}
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.mark.worker
def test_a_ready_worker_logs_names_that_match_no_task_once_with_location_and_suggestion(
    redis_server: RedisServer, tmp_path: Path, policy: Path
) -> None:
    url = redis_server.url_for(13)
    worker = make_worker(
        tmp_path, app=SHOPAPP, broker_url=url, policy=None, env={"SHOP_BROKER_URL": url, "SHOP_POLICY": str(policy)}
    )
    worker.start()
    try:
        worker.wait_for_log(r"policy_unmatched_tasks", timeout=10)
        events = log_events(worker.log_text(), "policy_unmatched_tasks")
        assert len(events) == 1, events
        assert events[0]["level"] == "warning"
        detail = events[0]["detail"].splitlines()
        assert detail == [
            f"{policy}:3:3: no task named 'shop.webhok' — did you mean 'shop.webhook'?",
            f"{policy}:5:3: pattern 'shop.exprt*' matches no registered task — did you mean 'shop.export'?",
        ]
    finally:
        worker.stop()


@pytest.mark.worker
def test_under_the_strict_setting_a_name_matching_no_task_stops_the_boot(
    redis_server: RedisServer, tmp_path: Path, policy: Path
) -> None:
    url = redis_server.url_for(13)
    env = {"SHOP_BROKER_URL": url, "SHOP_POLICY": str(policy), "CELERY_POLICY_STRICT_TASKS": "1"}
    worker = make_worker(tmp_path, app=SHOPAPP, broker_url=url, policy=None, env=env)
    with pytest.raises(ProcessStartError, match="exited with code"):
        worker.start()
    assert worker.returncode not in (None, 0)
    log = worker.log_text()
    assert f"{policy}:3:3: no task named 'shop.webhok' — did you mean 'shop.webhook'?" in log
    assert " ready." not in log
    worker.stop()


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SHOP_BROKER_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_explain_with_the_app_loaded_refuses_an_unknown_task_with_a_suggestion(policy: Path) -> None:
    standalone = _run(str(BIN / "celery-policy"), "explain", "shop.webhok", "--file", str(policy), "--app", SHOPAPP)
    assert standalone.returncode == 1
    assert standalone.stdout == ""
    assert standalone.stderr == "error: no task named 'shop.webhok' in the app — did you mean 'shop.webhook'?\n"
    sub = _run(sys.executable, "-m", "celery", "-A", SHOPAPP, "policy", "explain", "shop.webhok", "--file", str(policy))
    assert sub.returncode == 1, sub.stdout + sub.stderr
    assert "no task named 'shop.webhok' in the app — did you mean 'shop.webhook'?" in sub.stderr
    known = _run(str(BIN / "celery-policy"), "explain", "shop.sync", "--file", str(policy), "--app", SHOPAPP)
    assert known.returncode == 0, known.stderr
    assert re.search(r"timeout\.hard +4m", known.stdout)
    # the policy decides no retries for the webhook task; its own code does, and explain says so
    hand = _run(
        sys.executable, "-m", "celery", "-A", SHOPAPP, "policy", "explain", "shop.webhook", "--file", str(policy)
    )
    assert hand.returncode == 0, hand.stderr
    assert "the policy decides no retries for this task" in hand.stdout
    assert not re.search(r"retry +delay +cumulative", hand.stdout)  # no schedule that never runs
    assert re.search(r"retry +delay +cumulative", known.stdout) is None  # shop.sync: no retry.on in this policy
    assert (
        "the task's own code calls self.retry() and reads its own retry_backoff, retry_kwargs "
        "(at tests.support.apps.adopt.shopapp.handle_webhook_retry:"
    ) in hand.stdout
