"""Tasks behind a breaker and a shared limit, calling a "dependency" whose health the test sets in Redis.

``flow:down`` set = the dependency fails every call with ConnectionError. Every call the
body makes to it is journaled (``flow:calls:<key>`` and ``flow:calls``) with the time,
the worker's pid and ``request.retries``.
"""

from __future__ import annotations

import json
import os
import time

import redis
import structlog
from celery import Celery

import celery_policy

structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()])

app = Celery(
    "flowapp",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ["CELERY_RESULT_BACKEND"],
    task_cls=celery_policy.PolicyTask,
)
app.conf.update(broker_connection_retry_on_startup=True, task_serializer="json", accept_content=["json"])
celery_policy.install(app)
journal = redis.Redis.from_url(os.environ["FLOW_JOURNAL_URL"])


def _call_dependency(task: object, key: str) -> str:
    retries = int(getattr(getattr(task, "request", None), "retries", 0) or 0)
    entry = json.dumps({"t": time.time(), "pid": os.getpid(), "retries": retries, "key": key})
    down = journal.exists("flow:down")
    pipe = journal.pipeline()
    pipe.rpush(f"flow:calls:{key}", entry)
    pipe.rpush("flow:calls", entry)
    if down:
        pipe.rpush("flow:calls_down", entry)
    pipe.execute()
    if down:
        raise ConnectionError("payments API is down")
    return f"charged {key}"


@app.task(name="flow.charge", bind=True, shared=False)
def charge(self: object, key: str) -> str:
    return _call_dependency(self, key)


@app.task(name="flow.sync", bind=True, shared=False)
def sync(self: object, key: str) -> str:
    return _call_dependency(self, key)


@app.task(name="flow.report", bind=True, shared=False)
def report(self: object, key: str) -> str:
    return _call_dependency(self, key)


@app.task(name="flow.validate", bind=True, shared=False)
def validate(self: object, key: str) -> str:
    _call_dependency(self, key)
    raise ValueError(f"invalid order {key}")  # a permanent error: never counted by the breaker
