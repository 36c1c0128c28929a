"""Helpers for the runtime tests: module-scoped workers, the attempt journal, task results, decision logs.

The tests send tasks by name from a plain producer app and read outcomes
straight from Redis: the result key (never cached, so a FAILURE that a
requeue later turns into SUCCESS is seen as it changes), the journal lists
the tasks of ``rtapp`` write on every execution, and the worker's log.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
from _servers import WorkerProcess, repo_worker, running
from celery import Celery

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICIES = REPO_ROOT / "tests" / "runtime_policies"
RTAPP = "tests.runtime_apps.rtapp"
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_worker(
    log_dir: Path,
    *,
    broker_url: str,
    policy: str | Path | None,
    app: str = RTAPP,
    pool: str = "solo",
    concurrency: int = 1,
    queues: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "worker",
) -> WorkerProcess:
    """A (not yet started) ``celery worker`` for ``app`` on ``broker_url`` with ``policy`` as CELERY_POLICY_FILE."""
    environment = {"RT_BROKER_URL": broker_url, "CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": broker_url}
    if policy is not None:
        environment["CELERY_POLICY_FILE"] = str(POLICIES / policy) if isinstance(policy, str) else str(policy)
    environment.update(env or {})
    return repo_worker(app, log_dir, env=environment, pool=pool, concurrency=concurrency, queues=queues, name=name)


running_worker = running  # the name the runtime tests use


def producer(broker_url: str, name: str = "rt-client") -> Celery:
    """A plain producer app (no policy): sends tasks by name."""
    app = Celery(name, broker=broker_url, backend=broker_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    return app


class Journal:
    """What the tasks of ``rtapp`` recorded in Redis."""

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
        if data.get("event") == event and all(data.get(k) == v for k, v in match.items()):
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
