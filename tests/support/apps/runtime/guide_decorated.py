"""The guide's ``ingest`` task (§13) as written there: failure handling in decorator options.

The only change is a 1 s cap on the backoff (``retry_backoff_max=1``), so
exhausting 8 retries takes seconds.
"""

from __future__ import annotations

import os

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from tests.support.apps.runtime import guide_db as db
from tests.support.apps.runtime.guide_db import PermanentError, cleanup

BROKER = os.environ["RT_BROKER_URL"]
app = Celery("guide_decorated", broker=BROKER, backend=BROKER)
app.conf.update(broker_connection_retry_on_startup=True, task_serializer="json", result_serializer="json")


@app.task(
    name="guide.ingest",
    bind=True,
    acks_late=True,
    autoretry_for=(TimeoutError, ConnectionError),
    retry_backoff=True,
    retry_backoff_max=1,
    retry_jitter=True,
    retry_kwargs={"max_retries": 8},
)
def ingest(self: Task, record_id: str) -> dict[str, str]:
    try:
        rec = db.fetch(record_id)
        if not rec:
            raise PermanentError(f"Record not found: {record_id}")

        if db.already_done(record_id):
            return {"status": "already_done"}

        # do work
        db.mark_done(record_id)
        return {"status": "ok"}

    except PermanentError:
        # no retry: raise failure
        raise

    except SoftTimeLimitExceeded:
        # cleanup if needed
        cleanup(record_id)
        raise
