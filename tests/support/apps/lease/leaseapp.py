# Celery's task decorator is untyped:
# mypy: disable-error-code="untyped-decorator"
"""Long tasks and long countdowns against a short visibility timeout, under a policy or on plain Celery/kombu.

Environment: ``LEASE_BROKER_URL``; ``LEASE_MODE`` = ``policy`` (``celery_policy.install`` with
``CELERY_POLICY_FILE``: reliable fetch, leases, delayed delivery as the file says) or ``plain``
(plain kombu, the same settings by hand: late ack, prefetch 1, the visibility timeout in
``LEASE_VISIBILITY_S``); ``LEASE_TRANSPORT_OPTIONS`` (JSON, optional) adds transport options
to both (e.g. a fast kombu restore sweep, a fast heartbeat).

Each execution appends one JSON entry (task, key, time, pid, retries, redelivered) to
``lease:journal:<key>`` on the broker's Redis.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, Task

import celery_policy

BROKER = os.environ["LEASE_BROKER_URL"]
MODE = os.environ.get("LEASE_MODE", "policy")
OPTIONS = json.loads(os.environ.get("LEASE_TRANSPORT_OPTIONS") or "{}")

app = Celery("leaseapp", broker=BROKER, task_cls=celery_policy.PolicyTask if MODE == "policy" else Task)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_transport_options=OPTIONS,
)
if MODE == "policy":
    celery_policy.install(app)
else:
    from kombu.transport import redis as kombu_redis

    if not hasattr(kombu_redis.Channel, "unacked_restore_throttle"):
        # kombu < 5.4 scans for expired messages on every 10th sweep only (about every 100 s), with no option
        # to change it: scan on each sweep (every 10 s) so that the baseline's duplicates show within the test.
        _restore_visible = kombu_redis.QoS.restore_visible

        def _every_sweep(self: object, start: int = 0, num: int = 10, interval: int = 10) -> object:
            return _restore_visible(self, start, num, 1)

        kombu_redis.QoS.restore_visible = _every_sweep
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": float(os.environ["LEASE_VISIBILITY_S"]), **OPTIONS},
    )

_journal = redis.Redis.from_url(BROKER)


class Transient(ConnectionError):
    """Retried by the policy (``retry.on``)."""


def _record(task: Task, key: str) -> int:
    request = task.request
    entry = {
        "task": task.name,
        "key": key,
        "t": time.time(),
        "pid": os.getpid(),
        "retries": request.retries,
        "redelivered": bool((request.delivery_info or {}).get("redelivered")),
    }
    return int(_journal.rpush(f"lease:journal:{key}", json.dumps(entry)))


@app.task(name="lease.long", bind=True)
def long(self: Task, key: str, seconds: float) -> str:
    """Runs for ``seconds``."""
    _record(self, key)
    time.sleep(seconds)
    return "done"


@app.task(name="lease.retry", bind=True)
def retry(self: Task, key: str, countdown_s: float, fail_times: int = 1) -> str:
    """Fails its first ``fail_times`` attempts; the retry waits ``countdown_s`` (the policy's backoff, or by hand)."""
    _record(self, key)
    if (self.request.retries or 0) < fail_times:
        if MODE == "policy":
            raise Transient("not yet")
        raise self.retry(countdown=countdown_s, max_retries=fail_times, exc=Transient("not yet"))
    return "done"


@app.task(name="lease.snooze", bind=True)
def snooze(self: Task, key: str, countdown_s: float) -> str:
    """On its first run, puts itself back for ``countdown_s`` (schedule_delayed, no retry spent); then returns."""
    from celery.exceptions import Ignore

    from celery_policy.transport.delayed import schedule_delayed

    if _record(self, key) == 1:
        durable = schedule_delayed(self, countdown_s)
        _journal.rpush(f"lease:snoozed:{key}", "durable" if durable else "held")
        raise Ignore()
    return "done"
