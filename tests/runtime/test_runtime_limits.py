"""Time limits, late acks and lost workers: only a real prefork pool has them.

One prefork worker (2 children) runs this module against
tests/support/apps/runtime/limits.yaml. The journal records every execution with
the pid of the pool child that ran it, so a test can kill that child.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from support.harness import (
    RUNTIME_POLICIES,
    Journal,
    deliveries_once_drained,
    log_events,
    new_key,
    producer,
    runtime_worker,
    wait_events,
    wait_final,
)
from support.servers import RedisServer, WorkerProcess, is_alive, running

pytestmark = pytest.mark.worker

POLICY = RUNTIME_POLICIES / "limits.yaml"
DB = 3


class Env:
    def __init__(self, worker: WorkerProcess, client: Celery, redis_client: redis.Redis) -> None:
        self.worker = worker
        self.client = client
        self.redis = redis_client
        self.journal = Journal(redis_client)

    def send(self, name: str, *args: Any) -> str:
        return str(self.client.send_task(name, args=args).id)

    def decisions(self, task_id: str) -> list[dict[str, Any]]:
        return log_events(self.worker.log_text(), "policy_decision", task_id=task_id)


@pytest.fixture(scope="module")
def env(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    client_redis = redis_server.client(db=DB)
    client_redis.flushdb()
    url = redis_server.url_for(DB)
    worker = runtime_worker(
        tmp_path_factory.mktemp("rt-limits"),
        broker_url=url,
        policy=POLICY,
        pool="prefork",
        concurrency=2,
        name="limits",
    )
    client = producer(url)
    with running(worker, request.session):
        assert len(worker.wait_children(2)) == 2
        yield Env(worker, client, client_redis)
    client.close()


def _phases(entries: list[dict[str, Any]]) -> list[str]:
    return [e["phase"] for e in entries]


def test_soft_time_limit_runs_the_task_cleanup_then_is_retried_when_listed_in_on(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.soft.retry", key, 10, 1)

    meta = wait_final(env.redis, task_id, timeout=20)
    assert meta["status"] == "SUCCESS"
    entries = env.journal.entries(key)
    assert _phases(entries) == ["start", "cleanup", "start"]
    assert 0.4 <= entries[1]["t"] - entries[0]["t"] <= 2.0  # soft limit 500ms, not the 10 s sleep
    assert entries[1]["pid"] == entries[0]["pid"]  # the cleanup ran in the same child: no kill
    [decision] = env.decisions(task_id)
    assert decision["decision"] == "retry"
    assert decision["exc_type"].endswith("SoftTimeLimitExceeded")
    assert "limits.yaml" in decision["policy_source"]


def test_soft_time_limit_listed_in_never_fails_at_once_after_the_cleanup(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.soft.never", key, 10, 1)

    meta = wait_final(env.redis, task_id, timeout=20)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "SoftTimeLimitExceeded"
    assert deliveries_once_drained(env.worker, env.redis, task_id) == [1]  # nothing more can run
    assert _phases(env.journal.entries(key)) == ["start", "cleanup"]
    [decision] = env.decisions(task_id)
    assert (decision["decision"], decision["reason"]) == ("fail", "permanent")
    [hook] = env.journal.wait_hooks(task_id, 1)
    assert hook["reason"] == "permanent"


def test_a_task_that_cleans_up_after_its_soft_limit_past_the_backstop_deadline_gets_it_once(env: Env) -> None:
    """Celery's own signal raised the limit: the pool process's backstop (limit + 0.3 s) does not raise it again."""
    key = new_key()

    task_id = env.send("rt.soft.linger", key, 1.0)

    meta = wait_final(env.redis, task_id, timeout=20)
    assert meta["status"] == "SUCCESS", meta
    entries = env.journal.entries(key)
    assert _phases(entries) == ["start", "cleanup", "cleaned"]
    assert 0.4 <= entries[1]["t"] - entries[0]["t"] < 0.8  # Celery's signal, before the backstop's deadline
    assert entries[2]["t"] - entries[0]["t"] > 1.3  # the cleanup outlasted that deadline, uninterrupted
    assert log_events(env.worker.log_text(), "soft_time_limit_backstop", task_id=task_id) == []


def test_hard_time_limit_with_late_ack_and_no_ack_on_timeout_brings_the_message_back(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.hard.requeue", key, 10, 1)  # slow (killed) on the first execution only

    meta = wait_final(env.redis, task_id, timeout=30, states=frozenset({"SUCCESS"}))
    assert meta["result"] == "fast on execution 2"
    entries = env.journal.entries(key)
    assert len(entries) >= 2
    first, second = entries[0], entries[1]
    assert second["pid"] != first["pid"]
    assert not is_alive(first["pid"])  # the hard limit killed the child
    assert 0.9 <= second["t"] - first["t"] <= 6.0
    env.worker.wait_for_log(rf"Hard time limit \(1(\.0)?s\) exceeded for rt\.hard\.requeue\[{task_id}\]", timeout=5)
    # the message came back, so the hard limit was not a final failure: no on_failure hook, a "requeue" decision
    [decision] = env.decisions(task_id)
    assert (decision["decision"], decision["reason"]) == ("requeue", "time_limit")
    assert env.journal.hooks(task_id) == []


def test_hard_time_limit_with_default_acks_fails_with_time_limit_exceeded_and_reason_time_limit(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.hard.default", key, 10, 1)

    meta = wait_final(env.redis, task_id, timeout=30)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "TimeLimitExceeded"
    [hook] = env.journal.wait_hooks(task_id, 1)
    assert (hook["action"], hook["reason"], hook["exc"]) == ("fail", "time_limit", "TimeLimitExceeded")
    assert hook["pid"] == env.worker.pid  # the hard limit is handled in the worker's main process
    [decision] = wait_events(env.worker, "policy_decision", task_id=task_id)
    assert (decision["decision"], decision["reason"]) == ("fail", "time_limit")
    assert "limits.yaml" in decision["policy_source"]
    assert deliveries_once_drained(env.worker, env.redis, task_id) == [1]  # nothing more can run
    assert len(env.journal.entries(key)) == 1  # not run again
    assert wait_final(env.redis, task_id)["status"] == "FAILURE"


def test_a_pool_child_killed_mid_task_with_late_ack_and_reject_on_worker_lost_is_redelivered_and_completes(
    env: Env,
) -> None:
    key = new_key()

    task_id = env.send("rt.blocker", key, 30, 1)
    [started] = env.journal.wait(key, 1)
    assert started["pid"] in env.worker.children()
    os.kill(started["pid"], signal.SIGKILL)

    meta = wait_final(env.redis, task_id, timeout=30)
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == "fast on execution 2"
    entries = env.journal.entries(key)
    assert len(entries) == 2
    assert entries[1]["pid"] != started["pid"]
    assert env.worker.alive
    assert len(env.worker.wait_children(2)) == 2


def test_a_task_that_exits_its_pool_child_is_redelivered_and_completes(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.crasher", key, 1)

    meta = wait_final(env.redis, task_id, timeout=30)
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == "survived"
    entries = env.journal.entries(key)
    assert len(entries) == 2
    assert entries[1]["pid"] != entries[0]["pid"]


def test_policy_retry_budget_beats_the_decorators_autoretry_options(env: Env) -> None:
    key = new_key()

    # decorator: autoretry_for=(Transient,), max_retries=10, retry_backoff=True; policy: max_retries 2, 100 ms
    task_id = env.send("rt.decorated", key, "fail")

    meta = wait_final(env.redis, task_id, timeout=20)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "Transient"
    assert deliveries_once_drained(env.worker, env.redis, task_id) == [3]  # nothing more can run
    entries = env.journal.entries(key)
    assert [e["retries"] for e in entries] == [0, 1, 2]
    decisions = env.decisions(task_id)
    assert [(d["decision"], d["max"]) for d in decisions] == [("retry", 2), ("retry", 2), ("fail", 2)]
    assert [d["countdown"] for d in decisions[:2]] == [0.1, 0.1]
    [hook] = env.journal.wait_hooks(task_id, 1)  # the on_failure hook ran once: one policy wrapper, no autoretry loop
    assert (hook["action"], hook["reason"]) == ("fail", "exhausted")


def test_policy_soft_time_limit_beats_the_decorators_time_limit(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.decorated", key, "sleep")  # sleeps 5 s; decorator time_limit=99, policy soft 500ms

    meta = wait_final(env.redis, task_id, timeout=20)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "SoftTimeLimitExceeded"
    entries = env.journal.entries(key)
    assert _phases(entries) == ["start", "cleanup"]
    assert 0.4 <= entries[1]["t"] - entries[0]["t"] <= 2.0
