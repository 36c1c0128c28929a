"""Tasks that retry by hand (CP304 must never advise deleting what their code reads), as Saleor's webhooks do."""

from __future__ import annotations

from typing import Any

from celery import Celery

app = Celery("lintapp_handretry", broker="redis://127.0.0.1:1/0", set_as_current=False)
app.conf.update(task_time_limit=300, task_soft_time_limit=280, task_routes={"hooks.*": {"queue": "webhooks"}})


class WebhookError(Exception):
    pass


def handle_webhook_retry(task: Any, exc: Exception) -> None:
    countdown = task.retry_backoff * 2**task.request.retries
    raise task.retry(exc=exc, countdown=countdown, **task.retry_kwargs)


@app.task(name="hooks.send", bind=True, retry_backoff=10, retry_kwargs={"max_retries": 5}, time_limit=30, shared=False)
def send(self: Any, url: str) -> None:
    try:
        raise WebhookError(url)
    except WebhookError as exc:
        handle_webhook_retry(self, exc)


@app.task(
    name="hooks.sync",
    bind=True,
    autoretry_for=(ConnectionError,),
    retry_kwargs={"max_retries": 5},
    max_retries=4,
    shared=False,
)
def sync(self: Any, mode: str) -> None:
    if mode == "busy":
        raise self.retry()
