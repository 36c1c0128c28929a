"""A small app whose behaviour comes only from a policy file (CELERY_POLICY_FILE)."""

from __future__ import annotations

import json
import os
import time

import redis
import structlog
from celery import Celery

import celery_policy

structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()])

BROKER = os.environ["RT_BROKER_URL"]
app = Celery("rtapp", broker=BROKER, backend=BROKER, task_cls=celery_policy.PolicyTask)
app.conf.broker_connection_retry_on_startup = True
celery_policy.install(app)

_journal = redis.Redis.from_url(BROKER)


class Transient(ConnectionError):
    pass


class Permanent(ValueError):
    pass


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after}")
        self.retry_after = retry_after


class Flaky(RuntimeError):
    pass


def _record(name: str, key: str, **extra: object) -> int:
    """Append one attempt to a Redis list so tests can see every run and when it happened."""
    entry = {"task": name, "key": key, "t": time.time(), "pid": os.getpid(), **extra}
    return int(_journal.rpush(f"rt:journal:{key}", json.dumps(entry)))


@app.task(bind=True)
def transient(self, key: str, fail_times: int) -> str:
    n = _record("transient", key, retries=self.request.retries)
    if n <= fail_times:
        raise Transient(f"attempt {n} failed")
    return f"ok after {n}"


@app.task
def permanent(key: str) -> None:
    _record("permanent", key)
    raise Permanent("bad input")


@app.task
def unknown(key: str) -> None:
    _record("unknown", key)
    raise Flaky("who knows")


@app.task
def rate_limited(key: str, fail_times: int, retry_after: float) -> str:
    n = _record("rate_limited", key)
    if n <= fail_times:
        raise RateLimited(retry_after)
    return "ok"


@app.task
def sleeper(key: str, seconds: float) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    _record("sleeper", key)
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        _record("sleeper_cleanup", key)
        raise
    return "slept"


@app.task
def crasher(key: str, crash_times: int) -> str:
    n = _record("crasher", key)
    if n <= crash_times:
        os._exit(9)
    return "survived"


@app.task
def structured(key: str) -> None:
    _record("structured", key)
    raise Permanent("cannot parse")


@app.task
def secret(key: str, password: str, card_number: str = "") -> None:
    _record("secret", key)
    raise Permanent("rejected")


@app.task
def noisy_hook(key: str) -> None:
    _record("noisy_hook", key)
    raise Permanent("with a failing hook")


@app.task
def ok(x: int) -> int:
    return x + 1


def failing_hook(request: object, exc: object, decision: object) -> None:
    raise RuntimeError("hook bug")


def recording_hook(request: object, exc: object, decision: object) -> None:
    _journal.rpush("rt:hooks", json.dumps(decision.as_dict()))  # type: ignore[attr-defined]
