"""The app of the RabbitMQ tests; the same module and policy run on a Redis or a RabbitMQ broker.

``CP_BROKER_URL`` is the broker (redis:// or amqp://), ``CELERY_POLICY_FILE`` the
policy. Every execution appends one JSON entry to the Redis list
``cp:runs:<key>`` on ``CP_JOURNAL_URL``, so a test counts executions the same
way whichever broker carried the message.
"""

from __future__ import annotations

import json
import os
import time

import redis
import structlog
from celery import Celery, Task

import celery_policy

structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()])

app = Celery("brokerapp", broker=os.environ["CP_BROKER_URL"], task_cls=celery_policy.PolicyTask)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
)
celery_policy.install(app)

_journal = redis.Redis.from_url(os.environ["CP_JOURNAL_URL"])


class Permanent(ValueError):
    pass


class Transient(ConnectionError):
    pass


def _run(task: Task, key: str) -> int:
    entry = {
        "id": task.request.id,
        "t": time.time(),
        "pid": os.getpid(),
        "redelivered": bool((task.request.delivery_info or {}).get("redelivered")),
        "retries": task.request.retries,
        # RabbitMQ's dead-letter record, when the message came back from a delay queue: trips through each queue
        "x_death": {d.get("queue"): d.get("count") for d in (task.request.headers or {}).get("x-death") or []},
        "eta": getattr(task.request, "eta", None),
    }
    return int(_journal.rpush(f"cp:runs:{key}", json.dumps(entry)))


@app.task(name="cp.crash", bind=True)  # type: ignore[untyped-decorator]
def crash(self: Task, key: str) -> None:
    """Kills its own pool process on every run (a poison pill)."""
    _run(self, key)
    os._exit(9)


@app.task(name="cp.permanent", bind=True)  # type: ignore[untyped-decorator]
def permanent(self: Task, key: str, amount: int = 0) -> None:
    _run(self, key)
    raise Permanent(f"invalid amount {amount}")


@app.task(name="cp.once", bind=True)  # type: ignore[untyped-decorator]
def once(self: Task, key: str, value: int) -> int:
    """Fails with Permanent on its first run for ``key`` (a Redis flag), succeeds afterwards."""
    _run(self, key)
    if _journal.set(f"cp:once:{key}", "1", nx=True):
        raise Permanent(f"first run of {key} fails")
    return value * 2


@app.task(name="cp.later", bind=True)  # type: ignore[untyped-decorator]
def later(self: Task, key: str, fail_times: int) -> int:
    """Fails with Transient on its first ``fail_times`` runs (retried by the policy's backoff), then succeeds."""
    n = _run(self, key)
    if n <= fail_times:
        raise Transient(f"run {n} of {key} fails")
    return n
