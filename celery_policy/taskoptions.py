"""What a task's own code and decorator say about its failure handling, read without the runtime.

Shared by the runtime (``install``), the ``--app`` snapshot of ``check`` and
``init``: the decorator options a policy can also set, and the attribute
under which an app keeps its installed policy.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

APP_ATTR = "_celery_policy_runtime"  # the installed policy's runtime, on the app

# Decorator options celery-policy takes over; where the policy sets the same field, the policy wins.
DECORATOR_OPTIONS = (
    "time_limit", "soft_time_limit", "expires", "acks_late", "reject_on_worker_lost",
    "acks_on_failure_or_timeout", "max_retries", "default_retry_delay", "rate_limit",
    "autoretry_for", "dont_autoretry_for", "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter",
)  # fmt: skip

__all__ = ["APP_ATTR", "DECORATOR_OPTIONS", "config_values", "declared_options", "installed_runtime"]


def config_values(app: Celery) -> dict[str, Any]:
    """The app settings ``Task.bind`` copies onto task classes (``Task.from_config``), by attribute name."""
    return {attr: app.conf.get(setting) for attr, setting in Task.from_config if attr in DECORATOR_OPTIONS}


def declared_options(task_cls: type[Task], app: Celery, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The failure-handling options a task's decorator (or class body) set.

    ``Task.bind`` copies app settings onto the class for unset attributes
    (``Task.from_config``); values equal to those settings, and None, are not
    counted as declared. Pass ``settings`` (:func:`config_values`) when calling
    this for many tasks: reading ``app.conf`` is slow.
    """
    if settings is None:
        settings = config_values(app)
    attrs = vars(task_cls)
    declared: dict[str, Any] = {}
    for key in DECORATOR_OPTIONS:
        value = attrs.get(key)
        if value is None or (key in settings and settings[key] == value):
            continue
        declared[key] = value
    return declared


def installed_runtime(app: Any) -> Any:
    """The runtime ``celery_policy.install`` left on ``app``, or None."""
    return getattr(app, APP_ATTR, None)
