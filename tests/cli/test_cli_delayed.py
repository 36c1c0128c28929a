# kombu's Connection/Queue/Producer are unannotated:
# mypy: disable-error-code="no-untyped-call"
"""``celery-policy delayed list|stats`` and the delayed counts ``status``/``explain`` show, on a real redis-server."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Queue

from celery_policy.cli import main
from celery_policy.cli.delayed import delayed_counts
from celery_policy.cli.exit import CONNECT, OK, USAGE
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
