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

if os.environ.get("BENCH_GC_EACH_TASK") == "1":
    # bench_delayed.py's control run: collect the failure path's reference cycles after every task
    import gc

    from celery.signals import task_postrun

    @task_postrun.connect(weak=False)
    def _collect(**_: object) -> None:
        gc.collect()


@app.task(name="bench.work", bind=True, **options)
def work(self, i: int, fail_once: bool) -> int:
    if fail_once and not self.request.retries:
        raise ConnectionError("transient")
    counter.incr("bench:done")
    return i


_park_options: dict[str, object] = (
    {}
    if MODE == "policy"
    else {**options, "retry_kwargs": {"countdown": float(os.environ.get("BENCH_PARK_S", "3600")), "max_retries": 3}}
)


@app.task(name="bench.park", bind=True, **_park_options)
def park(self, i: int) -> int:
    """Fails its first attempt: the retry is parked for the backoff (1 h), by the worker or by the broker."""
    if not self.request.retries:
        counter.incr("bench:parked")
        raise ConnectionError("transient")
    counter.incr("bench:done")
    return i
