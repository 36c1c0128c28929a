"""Tasks whose decorators set options a policy also sets (CP304), once with install() and once without."""

from __future__ import annotations

import os

from celery import Celery

if os.environ.get("LINTAPP_INSTALL_POLICY"):
    import celery_policy

    app = Celery(
        "lintapp_decorated", broker="redis://127.0.0.1:1/0", set_as_current=False, task_cls=celery_policy.PolicyTask
    )
    app.conf.task_annotations = {"*": {"rate_limit": "5/s"}}  # configuration, not a decorator option (no CP304)
    celery_policy.install(app, os.environ["LINTAPP_INSTALL_POLICY"])
else:
    app = Celery("lintapp_decorated", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.task_annotations = {"*": {"rate_limit": "5/s"}}


@app.task(name="orders.charge", time_limit=60, autoretry_for=(ConnectionError,), retry_backoff=True, shared=False)
def charge(order_id: str) -> str:
    return order_id


@app.task(name="orders.ship", shared=False)
def ship(order_id: str) -> str:
    return order_id
