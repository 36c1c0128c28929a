"""The guide's ``ingest`` task (§13) with plain ``@app.task``: its failure handling lives in
tests/support/apps/runtime/guide.yaml (CELERY_POLICY_FILE)."""

from __future__ import annotations

import os

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

import celery_policy
from tests.support.apps.runtime import guide_db as db
from tests.support.apps.runtime.guide_db import PermanentError, cleanup

BROKER = os.environ["RT_BROKER_URL"]
app = Celery("guide_policy", broker=BROKER, backend=BROKER, task_cls=celery_policy.PolicyTask)
app.conf.update(broker_connection_retry_on_startup=True, task_serializer="json", result_serializer="json")
celery_policy.install(app)


@app.task(name="guide.ingest", bind=True)
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
