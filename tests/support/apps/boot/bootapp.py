"""The smallest app that installs a policy (CELERY_POLICY_FILE): for boot-time checks of the policy itself."""

from __future__ import annotations

import os

from celery import Celery

import celery_policy

app = Celery("bootapp", broker=os.environ["BOOT_BROKER_URL"], backend=os.environ["BOOT_BROKER_URL"])
app.conf.update(broker_connection_retry_on_startup=True)
celery_policy.install(app)


@app.task(name="boot.noop")
def noop() -> None:
    return None
