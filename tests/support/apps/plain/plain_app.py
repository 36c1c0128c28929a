"""A tiny plain Celery app (no celery-policy) for the fixture smoke tests.

The broker and result backend come from ``CELERY_BROKER_URL`` /
``CELERY_RESULT_BACKEND`` (set by the ``celery_worker_process`` fixture's
``broker_url=``), so the worker never falls back to a broker on a default port.
"""

from __future__ import annotations

import os
import time

from celery import Celery, current_task

try:
    BROKER_URL = os.environ["CELERY_BROKER_URL"]
except KeyError:  # pragma: no cover - a usage error of the test suite
    msg = "plain_app needs CELERY_BROKER_URL (the tests pass the private redis-server's URL)"
    raise RuntimeError(msg) from None

app = Celery("plain_app", broker=BROKER_URL, backend=os.environ.get("CELERY_RESULT_BACKEND", BROKER_URL))
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task(name="plain.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="plain.whoami")
def whoami() -> dict[str, object]:
    """Which process ran the task (the pool child under prefork, the worker itself under solo)."""
    return {"pid": os.getpid(), "hostname": current_task.request.hostname}


@app.task(name="plain.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
