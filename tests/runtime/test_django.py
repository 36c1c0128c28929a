"""Django: examples/django_project configures Celery with ``config_from_object("django.conf:settings",
namespace="CELERY")`` and names its policy in ``settings.CELERY_POLICY_FILE`` / ``CELERY_POLICY_ENV``.

Django comes from PyPI; the worker is a real ``celery -A shopsite worker`` on a private redis-server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from support.servers import REPO_ROOT, RedisServer

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter, RedisStreamStore

PROJECT = REPO_ROOT / "examples" / "django_project"
POLICY = PROJECT / "policies" / "celery-policy.yaml"
BIN = Path(sys.executable).parent


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_", "SHOPSITE_"))}
    environ["CELERY_BROKER_URL"] = "redis://localhost:1/0"  # parsed, never connected to
    environ.update(env or {})
    return subprocess.run(argv, cwd=PROJECT, env=environ, capture_output=True, text=True, timeout=60, check=False)


def explained(env: dict[str, str] | None, task: str) -> dict[str, Any]:
    done = run(str(BIN / "celery"), "-A", "shopsite", "policy", "explain", task, "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
    return data


def max_retries(data: dict[str, Any]) -> Any:
    return next(f["value"] for f in data["fields"] if f["path"] == "retry.max_retries")


def test_django_system_check_passes() -> None:
    done = run(sys.executable, "manage.py", "check")
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


def test_the_policy_file_and_environment_come_from_django_settings() -> None:
    data = explained(None, "orders.charge")
    assert data["files"] == [str(POLICY)]  # settings.CELERY_POLICY_FILE
    assert data["env"] == "production"  # settings.CELERY_POLICY_ENV
    assert max_retries(data) == 2
    # the setting follows the deployment's stage...
    development = explained({"SHOPSITE_STAGE": "development"}, "orders.send_receipt")
    assert development["env"] == "development"
    assert max_retries(development) == 0
    # ...and $CELERY_POLICY_ENV in the process environment wins over the setting
    assert explained({"CELERY_POLICY_ENV": "development"}, "orders.charge")["env"] == "development"


def test_celery_policy_check_of_the_django_app_is_clean() -> None:
    done = run(str(BIN / "celery"), "-A", "shopsite", "policy", "check", "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no problems in 1 file (env production)" in done.stdout


def wait_for(predicate: Callable[[], list[DeadLetter]], timeout: float = 30.0) -> list[DeadLetter]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail("no dead letter arrived in time")


@pytest.mark.worker
def test_a_django_worker_runs_the_production_policy_from_settings(
    clean_redis: RedisServer, celery_worker_process: Any
) -> None:
    url = clean_redis.url
    environ = {k: v for k, v in os.environ.items() if k.startswith(("CELERY_POLICY", "SHOPSITE_"))}
    assert not environ, f"the test needs these unset: {sorted(environ)}"
    celery_worker_process("shopsite", cwd=PROJECT, broker_url=url, pythonpath=[PROJECT])
    client = Celery("client", broker=url, backend=url)
    store = RedisStreamStore(url)
    client.send_task("orders.charge", args=(7,), kwargs={"outcome": "down"})
    (record,) = wait_for(lambda: list(store.iter(Filter(task="orders.charge"))))
    assert record.reason == "exhausted"
    assert record.attempts == 3  # production: max_retries 2 (the base file allows 8)
    assert record.exc_type == "orders.errors.GatewayDown"
    store.delete(record.id or "")
    client.send_task("orders.charge", args=(8,), kwargs={"outcome": "declined"})
    (declined,) = wait_for(lambda: list(store.iter(Filter(task="orders.charge"))))
    assert (declined.reason, declined.attempts) == ("permanent", 1)
    assert client.send_task("orders.charge", args=(9,)).get(timeout=30) == "charged 9"
