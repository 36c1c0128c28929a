"""Apps with their own Task base class (``task_cls`` / ``base=``), no PolicyTask anywhere in the MRO.

A real prefork worker runs tests/support/apps/adopt/shopapp.py (Saleor's
pattern: ``RestrictWriterDBTask`` as ``task_cls``, ``ExportTask`` whose
``on_failure`` never calls ``super()``) under a policy with dead letters. The
policy's behaviour is composed with the class's own ``on_failure``: both run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from support.harness import APPS, make_worker, new_key, producer, wait_events, wait_final, wait_record
from support.servers import RedisServer, WorkerProcess, running, wait_for

from celery_policy.deadletter.store import RedisStreamStore
from celery_policy.support import celery_handles_hard_timeouts

pytestmark = pytest.mark.worker

SHOPAPP = "tests.support.apps.adopt.shopapp"
POLICY = APPS / "adopt" / "deadletters.yaml"
DB = 9


class Env:
    def __init__(self, worker: WorkerProcess, client: Celery, redis_client: redis.Redis, url: str) -> None:
        self.worker = worker
        self.client = client
        self.redis = redis_client
        self.store = RedisStreamStore(url)

    def send(self, name: str, *args: Any) -> str:
        return str(self.client.send_task(name, args=args).id)

    def hooks(self, task_id: str) -> list[dict[str, Any]]:
        found = [json.loads(raw) for raw in self.redis.lrange("shop:hooks", 0, -1)]
        return [h for h in found if h["task_id"] == task_id]


@pytest.fixture(scope="module")
def env(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    client_redis = redis_server.client(db=DB)
    client_redis.flushdb()
    url = redis_server.url_for(DB)
    worker = make_worker(
        tmp_path_factory.mktemp("base-classes"),
        app=SHOPAPP,
        broker_url=url,
        policy=None,
        env={"SHOP_BROKER_URL": url, "SHOP_POLICY": str(POLICY)},
        pool="prefork",
        concurrency=2,
    )
    client = producer(url)
    with running(worker, request.session):
        yield Env(worker, client, client_redis, url)
    client.close()


@pytest.mark.parametrize(
    ("task", "hook"),
    [("shop.report", "base_on_failure"), ("shop.export_slow", "export_on_failure")],
    ids=["base-calls-super", "on_failure-without-super"],
)
def test_hard_time_limit_dead_letters_a_task_of_the_apps_own_base_class(env: Env, task: str, hook: str) -> None:
    task_id = env.send(task, new_key())
    meta = wait_final(env.redis, task_id, timeout=20)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "TimeLimitExceeded"
    record = wait_record(env.store, task_id)
    assert (record.task, record.reason) == (task, "time_limit")
    if celery_handles_hard_timeouts():  # Celery 5.7 calls on_failure on a hard time limit: the class's own ran once
        hooks = wait_for("the task's on_failure", lambda: env.hooks(task_id))
        assert [(h["kind"], h["exc"]) for h in hooks] == [(hook, "TimeLimitExceeded")]
    else:  # Celery 5.3-5.6 never call it there, and the policy does not start to
        time.sleep(0.5)
        assert env.hooks(task_id) == []


def test_a_body_failure_of_a_task_whose_on_failure_skips_super_is_dead_lettered(env: Env) -> None:
    task_id = env.send("shop.export", new_key())
    meta = wait_final(env.redis, task_id, timeout=20)
    assert (meta["status"], meta["result"]["exc_type"]) == ("FAILURE", "ExportError")
    record = wait_record(env.store, task_id)
    assert record.exc_type.endswith("ExportError")
    hooks = wait_for("the task's on_failure", lambda: env.hooks(task_id))
    assert [(h["kind"], h["exc"]) for h in hooks] == [("export_on_failure", "ExportError")]


def test_the_boot_log_names_a_task_and_method_the_policy_cannot_wrap(env: Env) -> None:
    events = wait_events(env.worker, "policy_not_composed")
    assert [(e["task"], e["method"]) for e in events] == [("shop.static_hook", "on_failure")]
    assert "on_failure is a staticmethod on tests.support.apps.adopt.shopapp.StaticHookTask" in events[0]["detail"]
    assert events[0]["level"] == "warning"
