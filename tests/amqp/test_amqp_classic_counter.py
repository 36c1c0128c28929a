"""A classic RabbitMQ queue has no delivery limit: the Redis redelivery counter caps a poison pill end to end.

The worker consumes from RabbitMQ (a classic queue, no ``x-delivery-limit``) and its
``dead_letter_store`` is a Redis URL, so ``ack.max_redeliveries`` is enforced by the
counter in that Redis and the dead letter lands in its stream.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from support.harness import BROKERAPP, amqp_message_count, amqp_runs, amqp_worker_env, new_key, wait_record
from support.servers import REPO_ROOT, RedisServer, WorkerProcess, wait_for

from celery_policy.deadletter.store import Filter, RedisStreamStore

pytest_plugins = ["support.rabbit"]  # fresh_vhost

WorkerFactory = Callable[..., WorkerProcess]

pytestmark = pytest.mark.worker

POLICY = """\
version: 1
defaults:
  retry: {{max_retries: 0}}
  dead_letter: {{enabled: true}}
  route: {{queue_type: classic}}
tasks:
  cp.crash:
    ack: {{late: true, reject_on_worker_lost: true, max_redeliveries: 2}}
dead_letter_store: {{backend: redis, url: "{url}", stream: cp:dead}}
"""


def test_a_classic_queue_poison_pill_is_stopped_by_the_redis_counter(
    fresh_vhost: Any, clean_redis: RedisServer, celery_worker_process: WorkerFactory, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url=clean_redis.url))
    celery_worker_process(
        BROKERAPP,
        pool="prefork",  # the poison pill kills a pool process, not the worker
        env=amqp_worker_env(fresh_vhost.url, clean_redis.url, policy),
        cwd=REPO_ROOT,
        pythonpath=(REPO_ROOT,),
    )
    key = new_key("crash")
    task_id = (
        Celery("classic-producer", broker=fresh_vhost.url)
        .send_task("cp.crash", args=[key], queue="celery", declare=[])
        .id
    )

    store = RedisStreamStore(clean_redis.url, "cp:dead")
    record = wait_record(store, task_id, timeout=90)
    assert (record.task, record.reason) == ("cp.crash", "redelivery_limit")
    assert record.exc_message == "message redelivered 3 times after lost workers (max_redeliveries=2)"
    # the first delivery and two redeliveries ran; RabbitMQ redelivered a third time and the counter stopped it
    assert [e["redelivered"] for e in amqp_runs(clean_redis.client(), key)] == [False, True, True]
    assert int(clean_redis.client().get(f"celery-policy:dlv:{{{task_id}}}:0") or 0) == 3
    wait_for("an empty task queue", lambda: amqp_message_count(fresh_vhost.url, "celery") == 0, timeout=20)
    assert [r.task_id for r in store.iter(Filter())] == [task_id]
