# kombu's Connection/Queue/Producer are unannotated:
# mypy: disable-error-code="no-untyped-call"
"""``celery-policy delayed list|stats`` and the delayed counts ``status``/``explain`` show, on a real redis-server.

The ``status``/``explain --app`` lines run the real ``celery-policy`` command against a
real worker whose retries (a 10 min backoff) wait in the broker's delayed set.
"""

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
from support.harness import make_worker, producer
from support.servers import REPO_ROOT, RedisServer, wait_for

from celery_policy.cli import main
from celery_policy.cli.delayed import delayed_counts
from celery_policy.cli.exit import CONNECT, OK, USAGE
from celery_policy.transport import RELIABLE_TRANSPORT, delayed

CELERY_POLICY = str(Path(sys.executable).with_name("celery-policy"))
LEASEAPP = "tests.support.apps.lease.leaseapp"
RETRY_LATER = """
version: 1
errors: {transient: [tests.support.apps.lease.leaseapp.Transient]}
defaults:
  retry: {on: [transient], max_retries: 3, backoff: {initial: 10m, factor: 1, max: 10m, jitter: none}}
  ack: {late: true}
worker: {prefetch_multiplier: 1}
"""
STATUS_LINE = "delayed messages (waiting in the broker): "
EXPLAIN_LINE = "delayed messages in the broker: "


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


def _command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CELERY_POLICY, *args], cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def _lines(env: dict[str, str], *args: str) -> list[str]:
    done = _command(env, *args)
    assert done.returncode == OK, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_status_and_explain_print_what_waits_in_the_delayed_set_per_queue(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    """Three real retries of a 10 min backoff on `celery`, two parked publishes on `reports`; `idle` is consumed
    and holds none, `soon`'s one entry fell due and moved out, so neither is listed."""
    policy = tmp_path / "later.yaml"
    policy.write_text(RETRY_LATER)
    env = {
        "LEASE_BROKER_URL": clean_redis.url,
        "LEASE_MODE": "policy",
        "CELERY_POLICY_FILE": str(policy),
        "LEASE_TRANSPORT_OPTIONS": json.dumps({"delayed_poll_interval": 0.2}),
    }
    worker = make_worker(tmp_path, app=LEASEAPP, broker_url=clean_redis.url, policy=policy, env=env,
                         queues=["celery", "idle"]).start()  # fmt: skip
    try:
        status = ("status", "--app", LEASEAPP, "--timeout", "3")
        explain = ("explain", "lease.retry", "--app", LEASEAPP, "--file", str(policy))

        # nothing delayed yet: explain says none, status prints no delayed line
        assert _lines(env, *explain)[-1] == EXPLAIN_LINE + "none"
        out = _lines(env, *status)
        assert out[0] == "1 worker, 1 policy"
        assert [line for line in out if line.startswith("delayed")] == []

        client = producer(clean_redis.url)
        for n in range(3):
            client.send_task("lease.retry", args=[f"k{n}", 600.0])
        _park(clean_redis.url, "reports", "r-1", 3600)
        _park(clean_redis.url, "reports", "r-2", 7200)
        _park(clean_redis.url, "soon", "s-1", 2.5)  # the eta has whole seconds: due in 1.5-2.5 s, so it is stored
        broker = clean_redis.client()
        assert delayed.counts(broker)["soon"] == 1
        wait_for("three retries in the delayed set", lambda: delayed.counts(broker).get("celery") == 3, 30)
        wait_for("soon's entry moved to its list", lambda: broker.llen("soon") == 1, 10)
        assert delayed.counts(broker) == {"celery": 3, "reports": 2}
        assert worker.alive

        assert _lines(env, *explain)[-1] == EXPLAIN_LINE + "celery 3, reports 2"
        data = json.loads(_command(env, *explain, "--format", "json").stdout)
        assert data["delayed"] == {"celery": 3, "reports": 2}
        out = _lines(env, *status)
        assert [line for line in out if line.startswith("delayed")] == [STATUS_LINE + "celery 3, reports 2"]
        data = json.loads(_command(env, *status, "--format", "json").stdout)
        assert data["delayed"] == {"celery": 3, "reports": 2}
    finally:
        worker.kill()  # not a fixture's worker: it would answer the status of later tests on this Redis


def test_explain_says_when_the_redis_broker_does_not_answer(tmp_path: Path) -> None:
    policy = tmp_path / "later.yaml"
    policy.write_text(RETRY_LATER)
    env = {"LEASE_BROKER_URL": "redis://127.0.0.1:1/0", "LEASE_MODE": "policy", "CELERY_POLICY_FILE": str(policy)}
    out = _lines(env, "explain", "lease.retry", "--app", LEASEAPP, "--file", str(policy))
    assert out[-1] == EXPLAIN_LINE + "cannot read them, the broker did not answer"
