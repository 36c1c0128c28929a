"""The app of the dead-letter tests: failure handling comes only from the policy file (CELERY_POLICY_FILE).

Every execution appends one JSON entry to the Redis list ``dl:runs:<key>`` on
the broker (``DL_BROKER_URL``), so a test can count executions even when the
dead-letter store is a different, stopped server. Task names are short and
explicit (``dl.*``) so the policies can name them.
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

BROKER = os.environ["DL_BROKER_URL"]
app = Celery("dlapp", broker=BROKER, backend=BROKER, task_cls=celery_policy.PolicyTask)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
celery_policy.install(app)

_journal = redis.Redis.from_url(BROKER)


class Transient(ConnectionError):
    pass


class Permanent(ValueError):
    pass


class Flaky(RuntimeError):
    pass


def _run(task: Task, key: str) -> int:
    """Record one execution; returns how many there were so far."""
    entry = {
        "task": task.name,
        "id": task.request.id,
        "t": time.time(),
        "pid": os.getpid(),
        "retries": task.request.retries,
        "redelivered": bool((task.request.delivery_info or {}).get("redelivered")),
    }
    return int(_journal.rpush(f"dl:runs:{key}", json.dumps(entry)))


@app.task(name="dl.transient", bind=True)
def transient(self: Task, key: str, order: dict[str, object] | None = None) -> None:
    n = _run(self, key)
    raise Transient(f"gateway timeout on run {n}")


@app.task(name="dl.permanent", bind=True)
def permanent(self: Task, key: str, amount: int = 0) -> None:
    _run(self, key)
    raise Permanent(f"invalid amount {amount}")


@app.task(name="dl.unknown", bind=True)
def unknown(self: Task, key: str) -> None:
    _run(self, key)
    raise Flaky("who knows")


def _slow(self: Task, key: str, seconds: float, fail_runs: int = 0) -> str:
    """Raises Transient on the first ``fail_runs`` runs, then sleeps ``seconds`` (past the hard limit)."""
    n = _run(self, key)
    if n <= fail_runs:
        raise Transient(f"gateway timeout on run {n}")
    time.sleep(seconds)
    return "slept"


slow = app.task(name="dl.slow", bind=True)(_slow)  # early ack
slow_late = app.task(name="dl.slow_late", bind=True)(_slow)  # ack.late
slow_no_record = app.task(name="dl.slow_no_record", bind=True)(_slow)  # dead_letter.on_time_limit: false


@app.task(name="dl.crash", bind=True)
def crash(self: Task, key: str) -> None:
    """Kills its own pool process on every run (a poison pill)."""
    _run(self, key)
    os._exit(9)


@app.task(name="dl.nodl", bind=True)
def nodl(self: Task, key: str) -> None:
    _run(self, key)
    raise Permanent("no dead letter for me")


@app.task(name="dl.secret", bind=True)
def secret(self: Task, key: str, password: str, profile: dict[str, object] | None = None) -> None:
    _run(self, key)
    # The message quotes the secret, as real exceptions often quote their input: it must be masked too.
    raise Permanent(f"login rejected for password {password!r}")


@app.task(name="dl.once", bind=True)
def once(self: Task, key: str, value: int) -> int:
    """Fails with Permanent on its first run for ``key`` (a Redis flag), succeeds afterwards."""
    _run(self, key)
    if _journal.set(f"dl:once:{key}", "1", nx=True):
        raise Permanent(f"first run of {key} fails")
    return value * 2


@app.task(name="dl.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="dl.total")
def total(values: list[int]) -> int:
    """A chord body."""
    return sum(values)
