"""The app measured by bench_flow.py: a "payments API" that the benchmark takes down, called by
plain Celery (autoretry_for / rate_limit by decorator) or by celery-policy (a breaker / a shared limit)."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery, signals

MODE = os.environ.get("BENCH_MODE", "plain")  # plain | policy
BROKER = os.environ["BENCH_BROKER_URL"]
POLICY = os.environ.get("BENCH_POLICY", "")
RETRIES = int(os.environ.get("BENCH_RETRIES", "10"))
BACKOFF_MAX = int(os.environ.get("BENCH_BACKOFF_MAX", "16"))
RATE = os.environ.get("BENCH_RATE", "40/s")

if MODE == "policy":
    import celery_policy

    app = Celery("bench_flow", broker=BROKER, task_cls=celery_policy.PolicyTask)
    celery_policy.install(app, POLICY)
    charge_options: dict[str, object] = {}
    sync_options: dict[str, object] = {}
else:
    app = Celery("bench_flow", broker=BROKER)
    # the same retries and backoff as the policy: countdown = min(16, 1 * 2**n), full jitter
    charge_options = {
        "autoretry_for": (ConnectionError,),
        "max_retries": RETRIES,
        "retry_backoff": 1,
        "retry_backoff_max": BACKOFF_MAX,
        "retry_jitter": True,
    }
    sync_options = {"rate_limit": RATE}
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
state = redis.Redis.from_url(BROKER)


def _call_payments_api() -> None:
    if state.exists("dep:down"):
        state.incr(f"calls_down:{MODE}")
        raise ConnectionError("payments API is down")
    state.incr(f"calls_up:{MODE}")


@app.task(name="bench.charge", **charge_options)  # type: ignore[untyped-decorator]  # celery is untyped
def charge(i: int) -> int:
    _call_payments_api()
    state.incr(f"done:{MODE}")
    return i


@app.task(name="bench.sync", **sync_options)  # type: ignore[untyped-decorator]
def sync(i: int) -> int:
    state.rpush(f"ran:{MODE}", f"{time.time():.6f}")
    return i


@app.task(name="bench.work")  # type: ignore[untyped-decorator]
def work(i: int) -> int:
    state.incr(f"work:{MODE}")
    return i


@signals.task_failure.connect  # type: ignore[untyped-decorator]
def _failed(sender: object = None, **kwargs: object) -> None:
    state.incr(f"failed:{MODE}")
