"""An app whose `charge` task is guarded by an idempotency key from the policy file."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

import celery_policy

BROKER = os.environ["CELERY_BROKER_URL"]
app = Celery("idemapp", broker=BROKER, backend=BROKER, task_cls=celery_policy.PolicyTask)
app.conf.broker_connection_retry_on_startup = True
celery_policy.install(app)
journal = redis.Redis.from_url(BROKER)


@app.task(name="idem.charge", shared=False)
def charge(order_id: str, amount: int, sleep_s: float = 0.3) -> dict[str, int]:
    journal.incr(f"runs:{order_id}")
    time.sleep(sleep_s)
    return {"charged": amount}


@app.task(name="idem.notify", shared=False)
def notify(user: str) -> str:
    journal.incr(f"runs:{user}")
    return f"sent to {user}"
