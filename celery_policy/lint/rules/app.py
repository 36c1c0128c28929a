"""CP3xx cross-checks against the Celery app given with ``--app`` (through its snapshot), and the worker pool."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator, Mapping

from celery_policy._yaml import KeyPath, render_path
from celery_policy.durations import format_duration
from celery_policy.errors import Diagnostic, trim
from celery_policy.lint.context import LintContext, View
from celery_policy.lint.registry import rule
from celery_policy.model import TaskPolicy
from celery_policy.patterns import is_glob
from celery_policy.taskoptions import POLICY_SETTINGS, OwnRetries

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
    "rate_limit": ("rate_limit",),
}
_OWN_RETRY_USES = {"max_retries", "default_retry_delay"}  # what a task's own self.retry() reads from the task
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
    """What it does: reports task decorator options and app settings that the policy overrides.

    One finding per task lists every option the policy replaces (where the
    policy sets a field its value wins: `time_limit`, `acks_late`, ...; where
    it decides retries its handling replaces `autoretry_for`/`retry_backoff`)
    and says which of them to delete. Options the task's own code reads
    (`self.retry_backoff`, `**task.retry_kwargs`) or that its own
    `self.retry()` uses are never to be deleted: the finding says so and
    how to let the policy drive that code instead (`retry.self_retry: policy`).
    One more finding lists the `app.conf` settings the policy replaces.

    Why: two places that seem to configure one task drift apart; readers of
    the task code believe the decorator. Deleting an option the code reads
    breaks the task.

    Example:
        bad:  @app.task(time_limit=60) with tasks: {orders.charge: {timeout: {hard: 2m}}}
        good: @app.task with the limit only in the policy
    """
    app = ctx.app
    if app is None:
        return
    for task, view in ctx.task_views():
        options = app.decorator_options.get(task)
        if options:
            found = _overridden(ctx, task, view, options, app.own_retries.get(task))
            if found is not None:
                yield found
    found = _settings_overridden(ctx)
    if found is not None:
        yield found


def _overridden(
    ctx: LintContext, task: str, view: View, options: Mapping[str, str], own: OwnRetries | None
) -> Diagnostic | None:
    retry = view.policy.retry
    policy_retries = bool(retry.on or retry.rules or retry.unknown == "retry")
    drives_own = retry.self_retry == "policy"
    calls_retry = own is not None and own.calls_retry
    read = own.read_options if own is not None else frozenset()
    replaced: dict[str, KeyPath] = {}  # option -> the policy key that replaces it
    kept: list[str] = []
    for option in sorted(options):
        if option in _RETRY_OPTIONS or option == "max_retries":
            path: KeyPath = ("retry", "max_retries") if option == "max_retries" else ("retry",)
            index = view.owner(path) if option == "max_retries" else view.owner(("retry",))
            own_use = option in read or (calls_retry and option in _OWN_RETRY_USES and not drives_own)
            if own_use:
                kept.append(option)
            elif index >= 0 and (policy_retries or (option == "max_retries" and drives_own)):
                replaced[option] = (*view.layers[index].prefix, *path)
        elif option in _OPTION_FIELDS:
            path = _OPTION_FIELDS[option]
            index = view.owner(path)
            if index >= 0:
                replaced[option] = (*view.layers[index].prefix, *path)
    if not replaced and not (kept and view.owner(("retry",)) >= 0):
        return None  # nothing the policy replaces, and no retry block that seems to speak for the task's own code
    parts: list[str] = []
    if replaced:
        listed = ", ".join(f"{o}={_value(options[o])}" for o in replaced)
        keys = sorted({render_path(p) for p in replaced.values()})
        verb = "wins" if len(keys) == 1 else "win"
        parts.append(f"task '{task}' sets {listed} in its decorator; the policy's {', '.join(keys)} {verb}")
    hints: list[str] = []
    if replaced:
        hints.append(f"remove {', '.join(replaced)} from the decorator so the policy is the one place to read")
    if kept:
        reads = [o for o in kept if o in read]
        if reads:
            where = own.where(reads[0]) if own is not None else ""
            lead = "its" if parts else f"task '{task}':"
            parts.append(f"{lead} code reads {', '.join(reads)} (at {where})")
        hints.append(
            f"keep {', '.join(kept)}: the task's own code "
            + ("reads them" if reads else "retries with self.retry(), which uses them")
            + "; to let the policy drive it, set retry.self_retry: policy and call self.retry(exc=exc) "
            "without countdown (the delay and cap then come from the policy's backoff and max_retries)"
        )
    anchor = next(iter(replaced.values())) if replaced else view.blame(("retry",))[1]
    return ctx.diagnostic("CP304", "; ".join(parts), anchor, "; ".join(hints))


def _settings_overridden(ctx: LintContext) -> Diagnostic | None:
    """The app.conf settings (as the app set them) that the policy replaces, in one finding."""
    app = ctx.app
    if app is None or not app.settings:
        return None
    document = ctx.document
    replaced: list[tuple[str, KeyPath]] = []
    for setting, value in sorted(app.settings.items()):
        target = POLICY_SETTINGS[setting]
        shown = _value(value)
        path: KeyPath | None = None
        if target.startswith("worker."):
            field_name = target.partition(".")[2]
            if field_name in document.worker.model_fields_set:
                path = ("worker", field_name)
        elif target == "route":
            routed = [n for n, section in document.tasks.items() if section.route is not None]
            if document.defaults.route is not None:
                path = ("defaults", "route")
            elif routed:
                path = ("tasks", routed[0], "route")
                shown = f"{shown} (for the tasks the policy routes)"
        else:  # a task setting is replaced for every task only by defaults (a task entry replaces it for one)
            keys = tuple(target.split("."))
            if any(leaf[: len(keys)] == keys for leaf in ctx.layering.defaults.leaves):
                path = ("defaults", *keys)
        if path is not None:
            replaced.append((f"{setting}={shown}", path))
    if not replaced:
        return None
    listed = ", ".join(f"{text} (by {render_path(path)})" for text, path in replaced)
    message = f"the policy replaces app.conf settings: {listed}"
    hint = "delete them from app.conf (or keep them for processes that do not install the policy)"
    return ctx.diagnostic("CP304", message, replaced[0][1], hint)


def _value(shown: str, limit: int = 40) -> str:
    """A value cut at a word boundary, never mid-name."""
    if len(shown) <= limit:
        return shown
    cut = shown[:limit]
    for separator in (", ", " ", ","):
        if separator in cut:
            cut = cut[: cut.rindex(separator)]
            break
    return cut + " …"
