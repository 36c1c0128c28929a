"""The app of the canvas-replay tests; the same module and policy run on a Redis or a RabbitMQ broker.

``RP_BROKER_URL`` is the broker, ``RP_JOURNAL_URL`` a Redis that is the result
backend and holds the journal: every execution appends one JSON entry to
``rp:runs:<key>`` (label, task id, parent/root ids, arguments, replay headers),
so a test sees which step of a canvas ran, how often, and with what input.
``rp.flaky`` fails with ``Permanent`` until the test sets ``rp:fixed:<key>``
(the cause of the failure fixed).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
import structlog
from celery import Celery, Task

import celery_policy

structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()])

app = Celery(
    "replayapp",
    broker=os.environ["RP_BROKER_URL"],
    backend=os.environ["RP_JOURNAL_URL"],
    task_cls=celery_policy.PolicyTask,
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
celery_policy.install(app)

_journal = redis.Redis.from_url(os.environ["RP_JOURNAL_URL"])


class Permanent(ValueError):
    pass


def _run(task: Task, key: str, label: str, **extra: Any) -> None:
    request = task.request
    headers = {k: v for k, v in (request.headers or {}).items() if str(k).startswith(("celery_policy_", "tenant"))}
    entry = {
        "label": label,
        "task": task.name,
        "id": request.id,
        "parent_id": request.parent_id,
        "root_id": request.root_id,
        "retries": request.retries,
        "headers": headers,
        "t": time.time(),
        **extra,
    }
    _journal.rpush(f"rp:runs:{key}", json.dumps(entry))


@app.task(name="rp.step", bind=True)  # type: ignore[untyped-decorator]
def step(self: Task, value: int, key: str, label: str, **_ignored: Any) -> int:
    _run(self, key, label, value=value)
    return value + 1


@app.task(name="rp.flaky", bind=True)  # type: ignore[untyped-decorator]
def flaky(self: Task, value: int, key: str, label: str) -> int:
    """Fails until the test fixed the cause (``rp:fixed:<key>``)."""
    _run(self, key, label, value=value)
    if not _journal.exists(f"rp:fixed:{key}"):
        raise Permanent(f"the dependency of {key} is down")
    return value * 10


@app.task(name="rp.on_error", bind=True)  # type: ignore[untyped-decorator]
def on_error(self: Task, failed_id: str, *, key: str) -> None:
    """A link_error (old style: Celery sends it the failed task's id)."""
    _run(self, key, "errback", failed_id=failed_id)


@app.task(name="rp.secret", bind=True)  # type: ignore[untyped-decorator]
def secret(self: Task, key: str, password: str) -> None:
    _run(self, key, "secret")
    raise Permanent("login rejected")
