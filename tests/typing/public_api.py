"""The public API as a user's code calls it; tests/unit/test_docs.py runs ``mypy --strict`` on this file."""

from __future__ import annotations

from celery import Celery

import celery_policy
from celery_policy import Policy, PolicyError, PolicyTask, ResolvedPolicy, load
from celery_policy.observability import configure_logging

app = Celery("typed", task_cls=PolicyTask)


def boot(path: str) -> Policy:
    configured: bool = configure_logging("json")
    assert isinstance(configured, bool)
    try:
        return celery_policy.install(app, path, env="production")
    except PolicyError as exc:
        message: str = str(exc)
        raise SystemExit(message) from exc


def max_retries(path: str, task: str) -> int | None:
    policy: Policy = load(path, env=None)
    resolved: ResolvedPolicy = policy.for_task(task)
    budget: int | None = resolved.policy.retry.max_retries
    return budget


version: str = celery_policy.__version__
