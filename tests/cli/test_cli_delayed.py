# kombu's Connection/Queue/Producer are unannotated:
# mypy: disable-error-code="no-untyped-call"
"""``celery-policy delayed list|stats`` and the delayed counts ``status``/``explain`` show, on a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Queue

from celery_policy.cli import main
from celery_policy.cli.delayed import delayed_counts
from celery_policy.cli.exit import CONNECT, FAILED, OK, USAGE
from celery_policy.transport import RELIABLE_TRANSPORT


def _park(url: str, queue: str, task_id: str, countdown_s: float) -> None:
    eta = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + countdown_s)) + "+00:00"
    headers = {"eta": eta, "id": task_id, "task": "shop.charge", "retries": 2}
    with (
        Connection(url, transport=RELIABLE_TRANSPORT, transport_options={"delayed_delivery": True}) as conn,
        conn.Producer() as producer,
    ):
        producer.publish({"a": 1}, routing_key=queue, declare=[Queue(queue)], headers=headers)


def test_stats_and_list_show_what_waits_per_queue(clean_redis: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = clean_redis.url
    _park(url, "payments", "t-1", 600)
    _park(url, "payments", "t-2", 30)
    _park(url, "reports", "t-3", 3600)
    assert main(["delayed", "stats", "--url", url, "--format", "json"]) == OK
    stats = json.loads(capsys.readouterr().out)
    assert {queue: row["delayed"] for queue, row in stats.items()} == {"payments": 2, "reports": 1}
    assert stats["payments"]["overdue"] == 0
    assert stats["payments"]["next_due"] < stats["payments"]["last_due"]
    assert main(["delayed", "list", "--url", url, "--format", "json"]) == OK
    rows = json.loads(capsys.readouterr().out)
    assert [row["id"] for row in rows] == ["t-2", "t-1", "t-3"]  # by due time, across queues
    assert {row["task"] for row in rows} == {"shop.charge"}
    assert {row["retries"] for row in rows} == {2}
    assert main(["delayed", "list", "--url", url, "--queue", "reports"]) == OK
    text = capsys.readouterr().out
    assert "t-3" in text
    assert "t-1" not in text
    assert main(["delayed", "stats", "--url", url]) == OK
    assert "payments" in capsys.readouterr().out
    assert delayed_counts(url) == {"payments": 2, "reports": 1}


def test_an_unreachable_or_non_redis_broker_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["delayed", "stats", "--url", "redis://127.0.0.1:1/0"]) == CONNECT
    assert "cannot reach the broker" in capsys.readouterr().err
    assert main(["delayed", "list", "--url", "amqp://guest@127.0.0.1//"]) == USAGE
    assert "Redis broker" in capsys.readouterr().err
    assert delayed_counts("amqp://guest@127.0.0.1//") is None


def test_explain_and_status_with_the_app_show_the_delayed_count_per_queue(clean_redis: Any, tmp_path: Path) -> None:
    """The real CLI, the app's broker a real redis-server holding parked retries in its delayed sets."""
    url = clean_redis.url
    _park(url, "payments", "t-1", 600)
    _park(url, "payments", "t-2", 30)
    _park(url, "reports", "t-3", 3600)
    (tmp_path / "parkapp.py").write_text(
        f'from celery import Celery\n\napp = Celery("parkapp", broker="{url}")\n\n\n'
        '@app.task(name="shop.charge")\ndef charge() -> None:\n    pass\n'
    )
    (tmp_path / "policy.yaml").write_text("version: 1\ntasks:\n  shop.charge: {retry: {max_retries: 2}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_POLICY")}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "celery_policy.cli", *argv]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)

    explained = cli("explain", "shop.charge", "--file", "policy.yaml", "--app", "parkapp")
    assert explained.returncode == OK, explained.stderr
    assert "delayed messages in the broker: payments 2, reports 1\n" in explained.stdout
    as_json = cli("explain", "shop.charge", "--file", "policy.yaml", "--app", "parkapp", "--format", "json")
    assert json.loads(as_json.stdout)["delayed"] == {"payments": 2, "reports": 1}
    status = cli("status", "--app", "parkapp", "--timeout", "0.3")
    assert status.returncode == FAILED, status.stderr  # no worker replied
    assert "delayed messages (waiting in the broker): payments 2, reports 1" in status.stdout
