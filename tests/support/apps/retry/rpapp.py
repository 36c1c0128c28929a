"""A task that fails transiently while the test stops the broker: its retry cannot be published."""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

import celery_policy

app = Celery("rpapp", broker=os.environ["CELERY_BROKER_URL"], task_cls=celery_policy.PolicyTask)
app.conf.broker_connection_retry_on_startup = True
app.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
app.conf.broker_transport_options = json.loads(os.environ.get("RP_TRANSPORT_OPTIONS") or "{}")
celery_policy.install(app)
journal = redis.Redis.from_url(os.environ["RP_JOURNAL_URL"])


@app.task(name="rp.flaky", shared=False)
def flaky(key: str) -> None:
    journal.rpush(f"rp:{key}", json.dumps({"t": time.time(), "retries": flaky.request.retries}))
    time.sleep(1.5)  # the test stops the broker now
    raise ConnectionError("upstream down")
