"""Workers of the test apps and how the tests read what they did: results, run journals, decision logs, dead letters.

The tests send tasks by name from a plain producer app and read outcomes
straight from Redis: the result key (never cached, so a FAILURE that a
requeue later turns into SUCCESS is seen as it changes), the journals the
apps write on every execution, and the worker's log. One section per app at
the end holds its module, policies and the environment its worker needs.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter, RedisStreamStore
from celery_policy.support import celery_consumes_quorum_queues
from support.servers import REPO_ROOT, WorkerProcess, repo_worker, wait_for

APPS = REPO_ROOT / "tests" / "support" / "apps"
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_worker(
    log_dir: Path,
    *,
    app: str,
    broker_url: str,
    policy: Path | None,
    env: Mapping[str, str] | None = None,
    pool: str = "solo",
    concurrency: int = 1,
    queues: Sequence[str] | None = None,
    name: str = "worker",
) -> WorkerProcess:
    """A (not yet started) ``celery worker`` for ``app`` on ``broker_url`` with ``policy`` as CELERY_POLICY_FILE."""
    environment = {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": broker_url}
    if policy is not None:
        environment["CELERY_POLICY_FILE"] = str(policy)
    environment.update(env or {})
    return repo_worker(app, log_dir, env=environment, pool=pool, concurrency=concurrency, queues=queues, name=name)


def producer(broker_url: str, name: str = "test-client") -> Celery:
    """A plain producer app (no policy): sends tasks by name."""
    app = Celery(name, broker=broker_url, backend=broker_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    return app


class Journal:
    """What the tasks of ``rtapp`` recorded in Redis (``rt:journal:<key>``, ``rt:hooks``)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def entries(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(f"rt:journal:{key}", 0, -1)]

    def wait(self, key: str, count: int, timeout: float = 20.0, **match: Any) -> list[dict[str, Any]]:
        """Wait until ``count`` entries (matching ``match``) exist for ``key``; return all entries."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.entries(key)
            found = [e for e in entries if all(e.get(k) == v for k, v in match.items())]
            if len(found) >= count:
                return entries
            if time.monotonic() >= deadline:
                msg = f"journal {key}: {len(found)} of {count} entries matching {match} after {timeout}s: {entries}"
                raise AssertionError(msg)
            time.sleep(0.05)

    def hooks(self, task_id: str) -> list[dict[str, Any]]:
        found = [json.loads(raw) for raw in self.client.lrange("rt:hooks", 0, -1)]
        return [h for h in found if h.get("task_id") == task_id]

    def wait_hooks(self, task_id: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.hooks(task_id)
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)


def task_meta(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    raw = client.get(f"celery-task-meta-{task_id}")
    return None if raw is None else dict(json.loads(raw))


def wait_final(
    client: redis.Redis, task_id: str, timeout: float = 30.0, states: frozenset[str] = FINAL_STATES
) -> dict[str, Any]:
    """The stored result once its state is one of ``states`` (read from Redis each time, never cached)."""
    deadline = time.monotonic() + timeout
    while True:
        meta = task_meta(client, task_id)
        if meta is not None and meta.get("status") in states:
            return meta
        if time.monotonic() >= deadline:
            msg = f"task {task_id} not in {sorted(states)} after {timeout}s (last: {meta})"
            raise AssertionError(msg)
        time.sleep(0.05)


def log_events(log_text: str, event: str, **match: Any) -> list[dict[str, Any]]:
    """The JSON structlog events named ``event`` in a worker log (prefixed or not by Celery's logger)."""
    found = []
    for line in log_text.splitlines():
        start = line.find('{"')
        if start < 0 or f'"{event}"' not in line:
            continue
        try:
            data = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("event") == event and all(data.get(k) == v for k, v in match.items()):
            found.append(data)
    return found


def wait_events(
    worker: WorkerProcess, event: str, count: int = 1, timeout: float = 20.0, **match: Any
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = log_events(worker.log_text(), event, **match)
        if len(found) >= count or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def gaps(entries: Sequence[Mapping[str, Any]]) -> list[float]:
    """Seconds between consecutive executions."""
    times = [float(e["t"]) for e in entries]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def records_for(store: RedisStreamStore, task_id: str) -> list[DeadLetter]:
    return [r for r in store.iter(Filter()) if r.task_id == task_id]


def wait_record(store: RedisStreamStore, task_id: str, timeout: float = 20.0) -> DeadLetter:
    """The one dead letter of ``task_id`` once written (fails if there are several)."""
    found = wait_for(f"a dead letter for {task_id}", lambda: records_for(store, task_id), timeout)
    assert len(found) == 1, found
    return found[0]


def broker_is_drained(client: redis.Redis, queue: str) -> bool:
    """No message left in ``queue`` nor in the Redis transport's ``unacked`` hash."""
    return client.llen(queue) == 0 and client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def deliveries_once_drained(
    worker: WorkerProcess,
    client: redis.Redis,
    *task_ids: str,
    queues: Sequence[str] = ("celery",),
    timeout: float = 30.0,
) -> list[int]:
    """Wait until the broker holds no message at all, then count how often the worker received each task.

    The negative check "nothing more ran" without a sleep: a retry is a message in a queue or,
    held for its countdown, in ``unacked``, and the worker logs "received" before a message
    leaves the broker. Once nothing is left, the count of "received" lines is final.
    """
    wait_for(
        "the broker to hold no message",
        lambda: all(client.llen(q) == 0 for q in queues) and broker_is_drained(client, queues[0]),
        timeout,
    )
    log = worker.log_text()
    return [len(re.findall(rf"Task \S+\[{re.escape(task_id)}\] received", log)) for task_id in task_ids]


def amqp_message_count(url: str, queue: str) -> int:
    """Ready messages in RabbitMQ ``queue`` (0 when it does not exist)."""
    from kombu.connection import Connection

    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        except Exception as exc:
            if getattr(exc, "reply_code", None) == 404:
                return 0
            raise


def _runs(client: redis.Redis, journal: str, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(f"{journal}:{key}", 0, -1)]


# -- runtime: apps/runtime/rtapp.py and the guide's apps, policies in apps/runtime/ ----------------------

RTAPP = "tests.support.apps.runtime.rtapp"
RUNTIME_POLICIES = APPS / "runtime"


def runtime_worker(
    log_dir: Path,
    *,
    broker_url: str,
    policy: str | Path | None,
    app: str = RTAPP,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> WorkerProcess:
    """A worker of ``rtapp`` (or ``app``); a ``str`` policy names a file in apps/runtime/."""
    path = RUNTIME_POLICIES / policy if isinstance(policy, str) else policy
    environment = {"RT_BROKER_URL": broker_url, **(env or {})}
    return make_worker(log_dir, app=app, broker_url=broker_url, policy=path, env=environment, **options)


# -- dead letters: apps/deadletter/dlapp.py with apps/deadletter/deadletter.yaml ------------------------

DLAPP = "tests.support.apps.deadletter.dlapp"
DEADLETTER_POLICY = APPS / "deadletter" / "deadletter.yaml"
DL_STREAM = "dl:dead"  # dead_letter_store.stream in deadletter.yaml


def deadletter_worker(
    log_dir: Path, *, broker_url: str, policy: Path = DEADLETTER_POLICY, **options: Any
) -> WorkerProcess:
    """A worker of ``dlapp`` with ``policy`` as CELERY_POLICY_FILE."""
    env = {"DL_BROKER_URL": broker_url}
    return make_worker(log_dir, app=DLAPP, broker_url=broker_url, policy=policy, env=env, **options)


def dl_runs(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The executions ``dlapp`` recorded for ``key``."""
    return _runs(client, "dl:runs", key)


# -- RabbitMQ: apps/amqp/brokerapp.py with apps/amqp/policy.yaml, on either broker -----------------------

BROKERAPP = "tests.support.apps.amqp.brokerapp"
AMQP_POLICY = APPS / "amqp" / "policy.yaml"


def amqp_worker_env(broker_url: str, journal_url: str, policy: Path = AMQP_POLICY) -> dict[str, str]:
    """The environment of a ``brokerapp`` worker: its broker, the Redis its journal goes to, its policy."""
    return {
        "CP_BROKER_URL": broker_url,
        "CP_JOURNAL_URL": journal_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_POLICY_FILE": str(policy),
    }


def amqp_runs(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The executions ``brokerapp`` recorded for ``key``."""
    return _runs(client, "cp:runs", key)


# apps/amqp/policy.yaml routes to a quorum queue, which workers before Celery 5.5 cannot consume from:
# there such a worker stops at boot (amqp/test_amqp_runtime.py::test_a_quorum_queue_policy_...).
QUORUM_REASON = "quorum queues need Celery 5.5+; on older Celery the boot refusal is tested instead"
needs_quorum_queues = pytest.mark.skipif(not celery_consumes_quorum_queues(), reason=QUORUM_REASON)
