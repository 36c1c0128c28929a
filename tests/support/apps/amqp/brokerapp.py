"""The app of the RabbitMQ tests; the same module and policy run on a Redis or a RabbitMQ broker.

``CP_BROKER_URL`` is the broker (redis:// or amqp://), ``CELERY_POLICY_FILE`` the
policy. Every execution appends one JSON entry to the Redis list
``cp:runs:<key>`` on ``CP_JOURNAL_URL``, so a test counts executions the same
way whichever broker carried the message. ``CP_SEND_ON_READY`` (JSON ``[task, args]``):
the worker sends that task itself when it is ready, right before its event loop starts.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
import structlog
from celery import Celery, Task, signals

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

if os.environ.get("CP_SEND_ON_READY"):  # JSON [task name, args]: sent by the worker itself as its loop starts

    @signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def _send_on_ready(sender: Any = None, **_: object) -> None:
        """Have the message waiting unread on the consumer's socket when the event loop starts.

        worker_ready fires after ``consume()``, just before Celery's loop: its first step would set the QoS
        (and read the delivery while waiting for the reply), so set it here first; then the delivery is the
        first thing the loop's quick drain reads, on every run and whatever the machine's load.
        """
        sender.qos.update()
        name, args = json.loads(os.environ["CP_SEND_ON_READY"])
        app.send_task(name, args=args)
        time.sleep(0.3)  # the broker delivers it meanwhile


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
