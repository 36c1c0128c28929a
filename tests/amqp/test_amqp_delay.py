"""The RabbitMQ delay path (celery_policy.runtime.amqp_delay): countdown retries wait in TTL bucket queues."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from support.harness import BROKERAPP, amqp_message_count, amqp_runs, amqp_worker_env, gaps, new_key
from support.servers import REPO_ROOT, WorkerProcess, wait_for

from celery_policy.runtime.amqp_delay import bucket_for, bucket_name

if TYPE_CHECKING:
    from support.rabbit import RabbitVhost

pytest_plugins = ["support.rabbit"]  # rabbit_broker, rabbit_vhost, fresh_vhost

WorkerFactory = Callable[..., WorkerProcess]  # tests/conftest.py celery_worker_process

POLICY = """
version: 1
errors:
  transient: [tests.support.apps.amqp.brokerapp.Transient]
defaults:
  retry:
    on: [transient]
    max_retries: 5
    backoff: {{initial: {countdown}s, factor: 1, max: {countdown}s, jitter: none}}
  ack: {{late: true}}
  log: {{args: show}}
worker: {{prefetch_multiplier: 1, delayed_delivery: {delayed}}}
"""


def test_buckets_never_shorten_a_countdown() -> None:
    assert bucket_for(0.5) is None  # under a second: Celery's own ETA path
    assert bucket_for(1) == 1
    assert bucket_for(3) == 5
    assert bucket_for(1800) == 1800
    assert bucket_for(1801) == 3600
    assert bucket_for(86401) is None
    for countdown in (1, 1.5, 7, 59, 61, 3599, 86400):
        bucket = bucket_for(countdown)
        assert bucket is not None
        assert bucket >= countdown


def test_a_retry_waits_in_a_bucket_queue_not_in_the_worker_and_each_trip_starts_a_fresh_x_death(
    fresh_vhost: RabbitVhost, clean_redis: Any, celery_worker_process: WorkerFactory, tmp_path: Path
) -> None:
    countdown_s = 3.0
    policy = tmp_path / "delay.yaml"
    policy.write_text(POLICY.format(countdown=countdown_s, delayed="true"))
    env = amqp_worker_env(fresh_vhost.url, clean_redis.url, policy)
    celery_worker_process(BROKERAPP, env=env, cwd=REPO_ROOT, pythonpath=(REPO_ROOT,), pool="prefork")
    from celery import Celery

    key = new_key("later")
    client = Celery("producer", broker=fresh_vhost.url)
    client.send_task("cp.later", args=[key, 2])
    journal = clean_redis.client()
    wait_for("the first run", lambda: amqp_runs(journal, key), 20)
    bucket = bucket_name("", "celery", 5)
    # while it waits, the retry is in the bucket queue, not unacked in the worker
    assert wait_for("the retry in its bucket", lambda: amqp_message_count(fresh_vhost.url, bucket) == 1, 3)
    runs = wait_for("three runs", lambda: (r := amqp_runs(journal, key))[2:] and r, 40)
    assert [run["retries"] for run in runs] == [0, 1, 2]
    waits = gaps(runs)
    assert all(countdown_s <= wait < 5 + 3 for wait in waits), (waits, runs)  # the 5 s bucket rounds up, never down
    assert [run["eta"] for run in runs] == [None, None, None]  # nothing for the worker to hold
    # RabbitMQ counts trips through a queue in x-death; a copied x-death would read 2 on the second retry
    assert runs[1]["x_death"] == {bucket: 1}
    assert runs[2]["x_death"] == {bucket: 1}, json.dumps(runs)
    assert amqp_message_count(fresh_vhost.url, bucket) == 0
    assert amqp_message_count(fresh_vhost.url, "celery") == 0


def test_a_solo_worker_gets_every_retry_back_within_its_bucket_step_the_first_one_too(
    fresh_vhost: RabbitVhost, clean_redis: Any, celery_worker_process: WorkerFactory, tmp_path: Path
) -> None:
    """The worker sends the task itself as its loop starts, so Celery's quick drain (the loop's first callback) reads
    it and the solo pool runs it there; its ack then used to wait for the hub's next poll (up to 10 s), and with a
    prefetch of 1 the retry back from its bucket waited for that ack (runtime/eventloop.py)."""
    countdown_s = 3.0
    bucket_s = bucket_for(countdown_s)
    assert bucket_s == 5
    margin_s = bucket_s / 2  # RabbitMQ expires on time; this is the worker's and the journal's latency under load
    policy = tmp_path / "delay.yaml"
    policy.write_text(POLICY.format(countdown=countdown_s, delayed="true"))
    key = new_key("solo")
    env = {
        **amqp_worker_env(fresh_vhost.url, clean_redis.url, policy),
        "CP_SEND_ON_READY": json.dumps(["cp.later", [key, 2]]),
    }
    celery_worker_process(BROKERAPP, env=env, cwd=REPO_ROOT, pythonpath=(REPO_ROOT,), pool="solo")
    journal = clean_redis.client()
    runs = wait_for("three runs", lambda: (r := amqp_runs(journal, key))[2:] and r, 60)
    assert [run["retries"] for run in runs] == [0, 1, 2]
    waits = gaps(runs)
    assert all(countdown_s <= wait < bucket_s + margin_s for wait in waits), (waits, runs)
    assert [run["eta"] for run in runs] == [None, None, None]


def test_without_the_delay_path_the_worker_holds_the_retry_until_due(
    fresh_vhost: RabbitVhost, clean_redis: Any, celery_worker_process: WorkerFactory, tmp_path: Path
) -> None:
    policy = tmp_path / "delay.yaml"
    policy.write_text(POLICY.format(countdown=3, delayed="false"))
    env = amqp_worker_env(fresh_vhost.url, clean_redis.url, policy)
    celery_worker_process(BROKERAPP, env=env, cwd=REPO_ROOT, pythonpath=(REPO_ROOT,))
    from celery import Celery

    key = new_key("held")
    Celery("producer", broker=fresh_vhost.url).send_task("cp.later", args=[key, 1])
    journal = clean_redis.client()
    runs = wait_for("two runs", lambda: (r := amqp_runs(journal, key))[1:] and r, 30)
    assert runs[1]["eta"] is not None  # an ETA message the worker held unacked for 3 s
    assert amqp_message_count(fresh_vhost.url, bucket_name("", "celery", 5)) == 0
