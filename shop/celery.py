"""The shop's Celery app. Failure handling comes from the policy file, not from decorators.

Run a worker from the repository root::

    CELERY_BROKER_URL=redis://localhost:6379/0 celery -A shop worker -Q celery,orders,emails,reports,webhooks

``celery_policy.install`` reads ``$CELERY_POLICY_FILE`` (default
``policies/celery-policy.yaml``) and ``$CELERY_POLICY_ENV``.
"""

from __future__ import annotations

import os

from celery import Celery

import celery_policy

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")

app = Celery(
    "shop",
    broker=BROKER_URL,
    backend=os.environ.get("CELERY_RESULT_BACKEND", BROKER_URL),
    include=["shop.tasks"],
    task_cls=celery_policy.PolicyTask,
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # webhooks back off up to 1h: cap the countdown retries one worker holds in memory (Celery 5.6+, CP223)
    worker_eta_task_limit=1000,
)
celery_policy.install(app)
