"""A small app for fleet tests: its policy comes from $CELERY_POLICY_FILE (and $CELERY_POLICY_ENV)."""

from __future__ import annotations

import os

import redis
from celery import Celery

import celery_policy

BROKER = os.environ["CELERY_BROKER_URL"]
app = Celery("fleetapp", broker=BROKER, backend=BROKER, task_cls=celery_policy.PolicyTask)
app.conf.broker_connection_retry_on_startup = True
celery_policy.install(app)
journal = redis.Redis.from_url(BROKER)


class PermanentError(Exception):
    """Never retried: the policy dead-letters it."""


@app.task(name="fleet.add", shared=False)  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="fleet.charge", shared=False)  # type: ignore[untyped-decorator]
def charge(order_id: str, amount: int) -> dict[str, int]:
    journal.incr(f"runs:{order_id}")
    return {"charged": amount}


@app.task(name="fleet.fail", shared=False)  # type: ignore[untyped-decorator]
def fail(reason: str) -> None:
    raise PermanentError(reason)
