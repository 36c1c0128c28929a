"""An app written the way Saleor writes its Celery tasks, to check that adopting a policy changes nothing.

- the app's own Task base class (``task_cls``), whose ``on_failure`` calls ``super()``,
  and a subclass whose ``on_failure`` never does (as Saleor's ``ExportTask``);
- a webhook task that retries by hand, reading its own ``retry_backoff`` and
  ``retry_kwargs`` (``countdown = task.retry_backoff * 2 ** retries``);
- a task with ``autoretry_for`` + ``retry_kwargs`` that also calls a bare ``self.retry()``;
- tasks with decorator time limits that a hard limit kills.

The policy is installed only when ``SHOP_POLICY`` names a file, so the same
code runs with and without it. Every execution appends to ``shop:runs:<key>``
(time, retries); every ``on_failure`` of the base classes to ``shop:hooks``.
``SHOP_MIGRATED=1`` switches the webhook task to the one-line policy-driven
form (``raise self.retry(exc=exc)``). ``SHOP_REMOVE`` applies advice to delete
decorator options: ``shop.sync=autoretry_for,retry_kwargs;shop.report=time_limit``
declares those tasks without them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
import structlog
from celery import Celery, Task

import celery_policy

structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()])

BROKER = os.environ["SHOP_BROKER_URL"]
_redis = redis.Redis.from_url(BROKER)


class WebhookError(Exception):
    """The receiver answered 5xx."""


class UpstreamDown(ConnectionError):
    pass


class ExportError(Exception):
    pass


def _hook(task: Task, kind: str, task_id: str, exc: BaseException) -> None:
    entry = {"task": task.name, "kind": kind, "task_id": task_id, "exc": type(exc).__name__}
    _redis.rpush("shop:hooks", json.dumps(entry))


class RestrictWriterDBTask(Task):  # type: ignore[misc]  # the app's own base class, not PolicyTask
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        _hook(self, "base_on_failure", task_id, exc)
        super().on_failure(exc, task_id, args, kwargs, einfo)


class ExportTask(RestrictWriterDBTask):
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        _hook(self, "export_on_failure", task_id, exc)  # never calls super()


def _log_failure(*args: Any) -> None:
    return None


class StaticHookTask(RestrictWriterDBTask):
    """A hook the policy cannot wrap: a staticmethod takes no task (the worker logs policy_not_composed)."""

    on_failure = staticmethod(_log_failure)


app = Celery("shopapp", broker=BROKER, backend=BROKER, task_cls=RestrictWriterDBTask)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
if os.environ.get("SHOP_POLICY"):
    celery_policy.install(app, os.environ["SHOP_POLICY"])


def _removed() -> dict[str, set[str]]:
    removed: dict[str, set[str]] = {}
    for entry in filter(None, os.environ.get("SHOP_REMOVE", "").split(";")):
        name, _, options = entry.partition("=")
        removed[name] = set(filter(None, options.split(",")))
    return removed


_REMOVED = _removed()


def task(name: str, **options: Any) -> Any:
    """``app.task`` without the options ``SHOP_REMOVE`` deletes from this task's decorator."""
    kept = {k: v for k, v in options.items() if k not in _REMOVED.get(name, set())}
    return app.task(name=name, **kept)


def _run(task: Task, key: str) -> int:
    entry = {"task": task.name, "t": time.time(), "retries": task.request.retries}
    return int(_redis.rpush(f"shop:runs:{key}", json.dumps(entry)))


@task("shop.webhook", bind=True, retry_backoff=0.25, retry_kwargs={"max_retries": 3})
def send_webhook(self: Task, key: str, fail_times: int) -> str:
    """Saleor's send_webhook_request_async: the retry schedule is in the task's own code."""
    attempt = _run(self, key)
    try:
        if attempt <= fail_times:
            raise WebhookError(f"receiver answered 503 (attempt {attempt})")
    except WebhookError as exc:
        if os.environ.get("SHOP_MIGRATED") == "1":
            raise self.retry(exc=exc) from None  # delay and cap from the policy (retry.self_retry: policy)
        handle_webhook_retry(self, exc)
    return "delivered"


def handle_webhook_retry(task: Task, exc: Exception) -> None:
    """Saleor keeps the retry schedule in a helper that reads the task's own options."""
    countdown = task.retry_backoff * 2**task.request.retries
    raise task.retry(exc=exc, countdown=countdown, **task.retry_kwargs) from None


@task(
    "shop.sync",
    bind=True,
    autoretry_for=(UpstreamDown,),
    retry_kwargs={"max_retries": 5},
    default_retry_delay=0.2,
)
def sync_stock(self: Task, key: str, mode: str) -> str:
    """Upstream outages retry through autoretry (5 retries); a busy lock retries by hand with a bare self.retry()."""
    _run(self, key)
    if mode == "upstream":
        raise UpstreamDown("stock service unreachable")
    if mode == "busy":
        raise self.retry()
    return "synced"


@task("shop.report", bind=True, time_limit=1)
def build_report(self: Task, key: str) -> str:
    _run(self, key)
    time.sleep(5)
    return "built"


@task("shop.export", bind=True, base=ExportTask)
def export_products(self: Task, key: str) -> str:
    _run(self, key)
    raise ExportError("export storage is full")


@task("shop.export_slow", bind=True, base=ExportTask, time_limit=1)
def export_slow(self: Task, key: str) -> str:
    _run(self, key)
    time.sleep(5)
    return "exported"


@task("shop.static_hook", bind=True, base=StaticHookTask)
def static_hook(self: Task, key: str) -> str:
    _run(self, key)
    return "ran"
