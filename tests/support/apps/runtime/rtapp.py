"""A small app whose failure handling comes only from a policy file (CELERY_POLICY_FILE).

Every task has an explicit short name (``rt.*``) so policies can name it.
Each execution appends one JSON entry to the Redis list ``rt:journal:<key>``
(task name, time, pid, ``request.retries``), so a test sees every attempt and
when it started. Hooks append the decision they received to ``rt:hooks``.
Several tasks share one body under different names, so one policy file can give
the same code different retry budgets, backoffs, limits and acks.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
import structlog
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

import celery_policy

structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()])

BROKER = os.environ["RT_BROKER_URL"]
app = Celery("rtapp", broker=BROKER, backend=BROKER, task_cls=celery_policy.PolicyTask)
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


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after}")
        self.retry_after = retry_after


class Flaky(RuntimeError):
    pass


def _record(task: Task, key: str, **extra: object) -> int:
    """Append one execution to ``rt:journal:<key>``; returns how many executions there were so far."""
    entry = {
        "task": task.name,
        "key": key,
        "t": time.time(),
        "pid": os.getpid(),
        "retries": task.request.retries,
        **extra,
    }
    return int(_journal.rpush(f"rt:journal:{key}", json.dumps(entry)))


def _task(*names: str, **options: Any) -> Any:
    """Register one body under several task names."""

    def register(fun: Any) -> Any:
        for name in names:
            app.task(name=name, bind=True, **options)(fun)
        return fun

    return register


# -- retries -------------------------------------------------------------------------------------


@_task(
    "rt.transient",
    "rt.backoff.equal",
    "rt.backoff.none",
    "rt.backoff.full",
    "rt.prec.exact",
    "rt.prec.other",
    "rt.hooked",
    "rt.unhooked",
    "rt.hooks.all",
)
def transient(self: Task, key: str, fail_times: int) -> str:
    """Raises Transient on the first ``fail_times`` executions, then succeeds."""
    n = _record(self, key)
    if n <= fail_times:
        raise Transient(f"attempt {n} failed")
    return f"ok after {n}"


@_task("rt.permanent")
def permanent(self: Task, key: str) -> None:
    _record(self, key)
    raise Permanent("bad input")


@_task("rt.unknown")
def unknown(self: Task, key: str) -> None:
    _record(self, key)
    raise Flaky("who knows")


@_task("rt.mixed", "rt.rate_limited")
def mixed(self: Task, key: str, rate_times: int, transient_times: int, retry_after: float) -> str:
    """RateLimited(retry_after) for ``rate_times`` executions, then Transient ``transient_times`` times, then ok."""
    n = _record(self, key)
    if n <= rate_times:
        raise RateLimited(retry_after)
    if n <= rate_times + transient_times:
        raise Transient(f"attempt {n} failed")
    return f"ok after {n}"


@_task("rt.structured")
def structured(self: Task, key: str) -> None:
    _record(self, key)
    raise Permanent("cannot parse")


@_task("rt.secret")
def secret(self: Task, key: str, password: str, card_number: str = "") -> None:
    _record(self, key)
    raise Permanent("rejected")


@_task("rt.report")
def report(self: Task, key: str) -> str:
    _record(self, key, queue=(self.request.delivery_info or {}).get("routing_key"))
    return "report done"


@_task("rt.ok")
def ok(self: Task, x: int) -> int:
    return x + 1


class OwnBase(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """A project's own base class that does not inherit PolicyTask: the policy reaches it through the annotator."""

    abstract = True


@app.task(name="rt.based", bind=True, base=OwnBase)
def based(self: Task, key: str, fail_times: int) -> str:
    """Like ``rt.transient`` but declared with ``base=OwnBase``."""
    n = _record(self, key, base=type(self).__mro__[1].__name__)
    if n <= fail_times:
        raise Transient(f"attempt {n} failed")
    return f"ok after {n}"


# -- time limits and lost workers (prefork) ------------------------------------------------------


@_task("rt.soft.retry", "rt.soft.never", "rt.hard.requeue", "rt.hard.default", "rt.blocker")
def sleeper(self: Task, key: str, seconds: float, slow_times: int = 1) -> str:
    """Sleeps ``seconds`` on the first ``slow_times`` executions (cleans up on a soft time limit); later ones return."""
    n = _record(self, key, phase="start")
    if n > slow_times:
        return f"fast on execution {n}"
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        _record(self, key, phase="cleanup")
        raise
    return f"slept on execution {n}"


@_task("rt.soft.linger")
def linger(self: Task, key: str, cleanup_s: float) -> str:
    """Catches its soft time limit and cleans up for ``cleanup_s``, past the backstop's deadline, then returns."""
    _record(self, key, phase="start")
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        _record(self, key, phase="cleanup")
        time.sleep(cleanup_s)  # a second SoftTimeLimitExceeded here would end the task as a failure
        _record(self, key, phase="cleaned")
    return "cleaned"


@_task("rt.crasher")
def crasher(self: Task, key: str, crash_times: int) -> str:
    n = _record(self, key)
    if n <= crash_times:
        os._exit(9)
    return "survived"


# -- decorator options the policy must override ---------------------------------------------------


@app.task(
    name="rt.decorated",
    bind=True,
    autoretry_for=(Transient,),
    max_retries=10,
    retry_backoff=True,
    time_limit=99,
)
def decorated(self: Task, key: str, mode: str) -> str:
    """``mode`` "fail": always Transient; "sleep": sleeps 5 s (cleans up on a soft time limit)."""
    _record(self, key, phase="start")
    if mode == "fail":
        raise Transient("decorated failure")
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        _record(self, key, phase="cleanup")
        raise
    return "slept"


# -- hooks named by policies ----------------------------------------------------------------------


def failing_hook(request: object, exc: object, decision: object) -> None:
    raise RuntimeError("hook bug")


def recording_hook(request: object, exc: object, decision: Any) -> None:
    entry = {**decision.as_dict(), "exc": type(exc).__name__, "pid": os.getpid()}
    _journal.rpush("rt:hooks", json.dumps(entry))


def _named_hook(hook: str, exc: object, decision: Any) -> None:
    entry = {**decision.as_dict(), "hook": hook, "exc": type(exc).__name__, "pid": os.getpid()}
    _journal.rpush("rt:hooks", json.dumps(entry))


def on_retry_hook(request: object, exc: object, decision: Any) -> None:
    _named_hook("on_retry", exc, decision)


def on_failure_hook(request: object, exc: object, decision: Any) -> None:
    _named_hook("on_failure", exc, decision)


def on_dead_letter_hook(request: object, exc: object, decision: Any) -> None:
    _named_hook("on_dead_letter", exc, decision)
