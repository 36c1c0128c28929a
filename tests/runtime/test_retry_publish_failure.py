"""A retry that cannot be published (broker down) is not dropped: Celery alone rejects the message.

With early ack the message is already gone from the broker, so the task is recorded as a
dead letter (the store is a separate Redis that stays up).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from celery_policy.deadletter.store import Filter, RedisStreamStore

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "tests" / "support" / "apps" / "retry" / "policy.yaml"

pytestmark = pytest.mark.worker


def test_a_retry_that_cannot_be_published_is_dead_lettered_instead_of_lost(
    redis_server_factory: Any, celery_worker_process: Any, tmp_path: Path
) -> None:
    broker = redis_server_factory(appendonly=True)
    store_server = redis_server_factory()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text() + f"dead_letter_store: {{url: '{store_server.url}', stream: rp:dead}}\n")
    env = {"CELERY_BROKER_URL": broker.url, "CELERY_POLICY_FILE": str(policy), "RP_JOURNAL_URL": store_server.url}
    worker = celery_worker_process("tests.support.apps.retry.rpapp", cwd=ROOT, env=env)
    from celery import Celery

    Celery("producer", broker=broker.url).send_task("rp.flaky", args=("k1",))
    deadline = time.monotonic() + 15
    while not store_server.client().llen("rp:k1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store_server.client().llen("rp:k1") == 1
    broker.stop()  # the task is sleeping; its retry will find no broker

    worker.wait_for_log("retry_publish_failed", timeout=20)
    store = RedisStreamStore(store_server.url, "rp:dead")
    deadline = time.monotonic() + 10
    while not store.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    (record,) = list(store.iter(Filter()))
    assert (record.task, record.reason, record.args) == ("rp.flaky", "exhausted", ["k1"])
    assert record.exc_type == "builtins.ConnectionError"
