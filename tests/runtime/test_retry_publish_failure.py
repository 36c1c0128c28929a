"""A retry that cannot be published (broker down) is not dropped: Celery alone rejects the message.

With early ack the message is already gone from the broker, so the task is recorded as a
dead letter (the store is a separate Redis that stays up). With late ack the message is
given back to the broker (``Reject(requeue=True)``) and runs again once the broker is back,
its retry counters unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from support.servers import wait_for

from celery_policy.deadletter.store import Filter, RedisStreamStore

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "tests" / "support" / "apps" / "retry" / "policy.yaml"
# Reliable fetch with short liveness windows: the message the worker held while the broker was
# down is given back after the heartbeat TTL instead of kombu's visibility timeout (1 h).
FAST_LIVENESS = {"reliable_heartbeat_interval": 0.5, "reliable_heartbeat_ttl": 3.0, "reliable_recover_interval": 1.0}

pytestmark = pytest.mark.worker


def _start(
    redis_server_factory: Any, celery_worker_process: Any, tmp_path: Path, extra_policy: str
) -> tuple[Any, Any, Any]:
    broker = redis_server_factory(appendonly=True)
    store_server = redis_server_factory()
    policy = tmp_path / "policy.yaml"
    text = POLICY.read_text().replace("worker: {reliable_fetch: false}\n", extra_policy)
    policy.write_text(text + f"dead_letter_store: {{url: '{store_server.url}', stream: rp:dead}}\n")
    env = {
        "CELERY_BROKER_URL": broker.url,
        "CELERY_POLICY_FILE": str(policy),
        "RP_JOURNAL_URL": store_server.url,
        "RP_TRANSPORT_OPTIONS": json.dumps(FAST_LIVENESS),
    }
    worker = celery_worker_process("tests.support.apps.retry.rpapp", cwd=ROOT, env=env)
    Celery("producer", broker=broker.url).send_task("rp.flaky", args=("k1",), task_id="rp-k1")
    journal = store_server.client()
    wait_for("the first run", lambda: journal.llen("rp:k1") == 1, timeout=30)
    broker.stop()  # the task is sleeping; its retry will find no broker
    worker.wait_for_log("retry_publish_failed", timeout=30)
    return broker, store_server, worker


def _runs(store_server: Any) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in store_server.client().lrange("rp:k1", 0, -1)]


def test_a_retry_that_cannot_be_published_is_dead_lettered_instead_of_lost(
    redis_server_factory: Any, celery_worker_process: Any, tmp_path: Path
) -> None:
    _broker, store_server, _worker = _start(
        redis_server_factory, celery_worker_process, tmp_path, "worker: {reliable_fetch: false}\n"
    )
    store = RedisStreamStore(store_server.url, "rp:dead")
    wait_for("the dead letter", store.count, timeout=20)
    (record,) = list(store.iter(Filter()))
    assert (record.task, record.reason, record.args) == ("rp.flaky", "exhausted", ["k1"])
    assert record.exc_type == "builtins.ConnectionError"


def test_with_late_ack_a_retry_that_cannot_be_published_is_requeued_and_runs_again(
    redis_server_factory: Any, celery_worker_process: Any, tmp_path: Path
) -> None:
    """The chaos policy's branch: ``Reject(requeue=True)``; the message comes back, nothing is dead-lettered early."""
    broker, store_server, worker = _start(
        redis_server_factory,
        celery_worker_process,
        tmp_path,
        "  ack: {late: true}\nworker: {reliable_fetch: true}\n",
    )
    store = RedisStreamStore(store_server.url, "rp:dead")
    # Nothing is dead-lettered while the broker is down: the message is only given back.
    assert store.count() == 0
    broker.start()
    # The same message runs again (its retry counter unchanged: it is a redelivery, not a retry) ...
    runs = wait_for("the requeued message to run again", lambda: (found := _runs(store_server))[1:] and found)
    assert [r["retries"] for r in runs[:2]] == [0, 0], runs
    # ... and then goes through the policy's 3 retries before it is dead-lettered as exhausted, once.
    wait_for("the dead letter", store.count, timeout=60)
    (record,) = list(store.iter(Filter()))
    assert (record.task, record.reason, record.args) == ("rp.flaky", "exhausted", ["k1"])
    assert [r["retries"] for r in _runs(store_server)] == [0, 0, 1, 2, 3]
    assert worker.alive
