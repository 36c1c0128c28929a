"""Helpers for the dead-letter tests: workers of ``dlapp``, its run journal, waiting for records and results."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
from _servers import WorkerProcess, repo_worker, running, wait_for  # noqa: F401 - re-exported for the tests
from celery import Celery

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter, RedisStreamStore

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICIES = REPO_ROOT / "tests" / "deadletter_policies"
POLICY = POLICIES / "deadletter.yaml"
DLAPP = "tests.deadletter_apps.dlapp"
STREAM = "dl:dead"  # dead_letter_store.stream in deadletter.yaml
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_worker(
    log_dir: Path,
    *,
    broker_url: str,
    policy: Path = POLICY,
    pool: str = "solo",
    concurrency: int = 1,
    queues: Sequence[str] | None = None,
    name: str = "worker",
) -> WorkerProcess:
    """A (not yet started) ``celery worker`` for ``dlapp`` with ``policy`` as CELERY_POLICY_FILE."""
    env = {
        "DL_BROKER_URL": broker_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": broker_url,
        "CELERY_POLICY_FILE": str(policy),
    }
    return repo_worker(DLAPP, log_dir, env=env, pool=pool, concurrency=concurrency, queues=queues, name=name)


def producer(broker_url: str) -> Celery:
    """A plain producer app (no policy) that sends tasks by name."""
    app = Celery("dl-client", broker=broker_url, backend=broker_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    return app


def runs(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The executions ``dlapp`` recorded for ``key``."""
    return [json.loads(raw) for raw in client.lrange(f"dl:runs:{key}", 0, -1)]


def records_for(store: RedisStreamStore, task_id: str) -> list[DeadLetter]:
    return [r for r in store.iter(Filter()) if r.task_id == task_id]


def wait_record(store: RedisStreamStore, task_id: str, timeout: float = 20.0) -> DeadLetter:
    """The one dead letter of ``task_id`` once written (fails if there are several)."""
    found = wait_for(f"a dead letter for {task_id}", lambda: records_for(store, task_id), timeout)
    assert len(found) == 1, found
    return found[0]


def task_meta(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    raw = client.get(f"celery-task-meta-{task_id}")
    return None if raw is None else dict(json.loads(raw))


def wait_final(client: redis.Redis, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The stored result once final (read from Redis each time, never cached)."""
    return wait_for(
        f"a final state of task {task_id}",
        lambda: m if (m := task_meta(client, task_id)) and m.get("status") in FINAL_STATES else None,
        timeout,
    )


def log_events(log_text: str, event: str, **match: Any) -> list[dict[str, Any]]:
    """structlog JSON events named ``event`` in a worker log whose fields equal ``match``."""
    found = []
    for line in log_text.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            data = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("event") == event and all(data.get(k) == v for k, v in match.items()):
            found.append(data)
    return found


def broker_is_drained(client: redis.Redis, queue: str) -> bool:
    """No message left in ``queue`` nor in the Redis transport's ``unacked`` hash."""
    return client.llen(queue) == 0 and client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def as_mapping(record: DeadLetter) -> Mapping[str, Any]:
    return record.model_dump()
