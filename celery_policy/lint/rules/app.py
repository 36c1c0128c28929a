"""CP3xx cross-checks against the Celery app given with ``--app`` (through its snapshot), and the worker pool."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator

from celery_policy._yaml import KeyPath, render_path
from celery_policy.durations import format_duration
from celery_policy.errors import Diagnostic, trim
from celery_policy.lint.context import LintContext
from celery_policy.lint.registry import rule
from celery_policy.model import TaskPolicy
from celery_policy.patterns import is_glob

POOLS_WITHOUT_LIMITS = {"solo", "threads", "eventlet"}
# worker_pool may name the class ("celery.concurrency.solo:TaskPool") instead of Celery's alias
_POOL_MODULES = {
    "celery.concurrency.prefork": "prefork",
    "celery.concurrency.solo": "solo",
    "celery.concurrency.thread": "threads",
    "celery.concurrency.eventlet": "eventlet",
    "celery.concurrency.gevent": "gevent",
}


def pool_name(pool: str) -> str:
    """Celery's alias of a ``worker_pool`` value (``celery.concurrency.solo:TaskPool`` -> ``solo``)."""
    return _POOL_MODULES.get(pool.partition(":")[0], pool)


def _d(seconds: float) -> str:
    return format_duration(seconds)


@rule("CP301", "unknown-task", needs_app=True)
def unknown_task(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports task names and patterns in `tasks` that match no task the app registers.

    Celery's own `celery.*` tasks are left alone.

    Why: a typo silently leaves the real task on the defaults.

    Example:
        bad:  tasks: {billing.charge_crad: {...}}
        good: tasks: {billing.charge_card: {...}}
    """
    app = ctx.app
    if app is None:
        return
    registered = app.user_tasks()
    for name in ctx.document.tasks:
        if name.startswith("celery."):
            continue
        if is_glob(name):
            if any(fnmatch.fnmatchcase(task, name) for task in registered):
                continue
            message = f"pattern '{trim(name)}' matches no registered task"
        elif name in app.tasks:
            continue
        else:
            message = f"unknown task '{trim(name)}'"
        close = difflib.get_close_matches(name, registered, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        hint += f"tasks are read from --app {app.spec}"
        yield ctx.diagnostic("CP301", message, ("tasks", name), hint)


@rule("CP302", "undeclared-queue", needs_app=True)
def undeclared_queue(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports `route.queue` naming a queue the app does not declare.

    Checked when the app sets `task_queues`, or turns off
    `task_create_missing_queues` (then only the default queue exists).

    Why: with `task_create_missing_queues: False` publishing fails; otherwise
    the messages go to a queue no worker consumes by default.

    Example:
        bad:  route: {queue: report}        (the app declares 'reports')
        good: route: {queue: reports}
    """
    app = ctx.app
    if app is None:
        return
    if app.declared_queues is not None:
        known = sorted(app.declared_queues)
    elif not app.create_missing_queues:
        known = [app.default_queue]
    else:
        return
    sections: list[tuple[KeyPath, TaskPolicy]] = [(("defaults",), ctx.document.defaults)]
    sections.extend((("tasks", name), section) for name, section in ctx.document.tasks.items())
    for prefix, section in sections:
        route = section.route
        if route is None or route.queue is None or route.queue in known:
            continue
        close = difflib.get_close_matches(route.queue, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        hint += f"declared queues: {', '.join(known)}"
        yield ctx.diagnostic(
            "CP302",
            f"route to queue '{trim(route.queue)}' that the app does not declare",
            (*prefix, "route", "queue"),
            hint,
        )


@rule("CP303", "pool-ignores-time-limits", severity="warning")
def pool_ignores_time_limits(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns about time limits under a worker pool that ignores them.

    The pool is `worker.pool`, else the app's `worker_pool` (`--app`; an alias
    or the pool class, such as `celery.concurrency.thread:TaskPool`). `solo`,
    `threads` and `eventlet` ignore both limits; `gevent` ignores the soft
    one. A pool chosen only on the command line (`celery worker -P solo`) is
    invisible to `check`: set `worker.pool` so the policy says it.

    Why: the limit silently never fires, so a stuck task is never stopped.

    Example:
        bad:  worker: {pool: solo}, defaults: {timeout: {hard: 5m}}
        good: worker: {pool: prefork}, defaults: {timeout: {hard: 5m}}
    """
    pool = ctx.document.worker.pool or (pool_name(ctx.app.pool) if ctx.app is not None else None)
    if pool is None or pool in {"prefork", "processes"}:
        return
    for view in ctx.views():
        timeout = view.policy.timeout
        ignored: list[tuple[str, float]] = []
        if pool in POOLS_WITHOUT_LIMITS:
            ignored = [(n, v) for n, v in (("soft", timeout.soft), ("hard", timeout.hard)) if v is not None]
        elif pool == "gevent" and timeout.soft is not None:
            ignored = [("soft", timeout.soft)]
        for name, value in ignored:
            _layer, path = view.blame(("timeout", name))
            if view.owner(("timeout", name)) < 0:
                continue
            message = f"the {pool} pool ignores time limits: timeout.{name} {_d(value)} never fires"
            hint = "use the prefork pool (or gevent for hard limits), or drop the limit"
            yield ctx.diagnostic("CP303", message, path, hint)


_OPTION_FIELDS: dict[str, KeyPath] = {
    "time_limit": ("timeout", "hard"),
    "soft_time_limit": ("timeout", "soft"),
    "expires": ("timeout", "expires"),
    "acks_late": ("ack", "late"),
    "reject_on_worker_lost": ("ack", "reject_on_worker_lost"),
    "acks_on_failure_or_timeout": ("ack", "on_failure_or_timeout"),
    "max_retries": ("retry", "max_retries"),
    "rate_limit": ("rate_limit",),
}
_RETRY_OPTIONS = {
    "autoretry_for",
    "dont_autoretry_for",
    "retry_kwargs",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "default_retry_delay",
}


@rule("CP304", "decorator-overridden", severity="warning", needs_app=True)
def decorator_overridden(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports task decorator options that the policy overrides.

    Where the policy sets a field, its value wins over the decorator's
    (`time_limit`, `acks_late`, `max_retries`, ...), and the policy's retry
    handling replaces the decorator's `autoretry_for`/`retry_backoff`.

    Why: two places that seem to configure one task drift apart; readers of
    the task code believe the decorator.

    Example:
        bad:  @app.task(time_limit=60) with tasks: {orders.charge: {timeout: {hard: 2m}}}
        good: @app.task with the limit only in the policy
    """
    app = ctx.app
    if app is None:
        return
    for task, view in ctx.task_views():
        options = app.decorator_options.get(task)
        if not options:
            continue
        for option, shown in sorted(options.items()):
            if option in _RETRY_OPTIONS:
                path: KeyPath = ("retry",)
            elif option in _OPTION_FIELDS:
                path = _OPTION_FIELDS[option]
            else:
                continue
            index = view.owner(path)
            if index < 0:
                continue
            layer = view.layers[index]
            where = f"{render_path((*layer.prefix, *path))}"
            message = f"task '{trim(task)}' sets {option}={trim(shown, 30)} in its decorator; the policy's {where} wins"
            hint = "remove the option from the decorator so the policy is the one place to read"
            yield ctx.diagnostic("CP304", message, (*layer.prefix, *path), hint)
