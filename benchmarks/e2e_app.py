"""The app measured by bench_e2e.py: the same task, configured by decorator (plain) or by policy."""

from __future__ import annotations

import os

import redis
from celery import Celery

MODE = os.environ.get("BENCH_MODE", "plain")
BROKER = os.environ["BENCH_BROKER_URL"]
POLICY = os.environ.get("BENCH_POLICY", "")

if MODE == "policy":
    import celery_policy

    app = Celery("bench_e2e", broker=BROKER, task_cls=celery_policy.PolicyTask)
    celery_policy.install(app, POLICY)
    options: dict[str, object] = {}
else:
    app = Celery("bench_e2e", broker=BROKER)
    app.conf.worker_prefetch_multiplier = 1
    options = {
        "acks_late": True,
        "reject_on_worker_lost": True,
        "autoretry_for": (ConnectionError,),
        "retry_kwargs": {"countdown": 0, "max_retries": 3},
        "soft_time_limit": 300,
        "time_limit": 330,
    }
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True
counter = redis.Redis.from_url(BROKER)


@app.task(name="bench.work", bind=True, **options)
def work(self, i: int, fail_once: bool) -> int:
    if fail_once and not self.request.retries:
        raise ConnectionError("transient")
    counter.incr("bench:done")
    return i
