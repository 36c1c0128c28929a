"""CP220-CP223: the policy against the broker and worker settings around it.

These are the failures Celery users report from production: a retry that
outlives RabbitMQ's ``consumer_timeout``, a deploy's SIGTERM without soft
shutdown, a deduplication setting that forgets too early, and countdown retries
piling up in worker memory. Settings the policy file does not hold come from
the app (``--app``) and from ``[tool.celery-policy]``.

Delayed delivery keeps countdown retries out of the worker, so the rules about
held retries (CP220, CP223) skip it: RabbitMQ's native delayed delivery (Celery
5.5+ with quorum queues on a topic or fanout exchange), and celery-policy's own when
the model has the key ``worker.delayed_delivery`` (read with ``getattr``, so these
rules work with and without it): ``true``, or unset while reliable fetch is on (its
documented default), on a broker ``celery_policy.transport.DELAYED_DELIVERY_BROKERS``
lists (``redis`` when the transport does not say).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

from celery_policy._yaml import KeyPath, render_path
from celery_policy.backoff import longest_delay
from celery_policy.budgets import Budget, budgets
from celery_policy.durations import format_duration
from celery_policy.errors import Diagnostic, trim
from celery_policy.lint.context import Layer, LintContext, View
from celery_policy.lint.registry import rule
from celery_policy.queues import queue_of

CONSUMER_TIMEOUT_DEFAULT_S = 1800.0  # RabbitMQ 3.8.17+ (15 min in 3.8.15-3.8.16)
ETA_LONG_DELAY_S = 600.0  # a retry held this long (Celery's retry_backoff_max) is "long"
ETA_HELD_MESSAGES = 1000  # with a rate limit: fewer held retries than this are harmless
NATIVE_DELAY_EXCHANGES = {"topic", "fanout"}

_HARD = ("timeout", "hard")
_SOFT = ("timeout", "soft")


def _d(seconds: float) -> str:
    return format_duration(seconds)


def _rule_path(budget: Budget, layer: Layer) -> KeyPath:
    return (*layer.prefix, "retry", "rules", budget.rule_index or 0)


def _delay_path(view: View, budget: Budget, fallback: KeyPath) -> KeyPath:
    """Where to point for a budget's longest delay: its `rules` entry, the backoff that sets it, else ``fallback``."""
    if budget.rule_index is not None:
        return _rule_path(budget, view.blame(("retry", "rules"))[0])
    if view.owner(("retry", "backoff")) < 0:  # built-in backoff: what is short is the broker's limit
        return fallback
    return view.blame(("retry", "backoff", "max"), ("retry", "backoff"))[1]


def _queue(ctx: LintContext, view: View) -> str:
    return queue_of(view.policy.route, ctx.app.default_queue if ctx.app is not None else "celery")


def _broker(ctx: LintContext) -> str | None:
    """``redis``, ``sqs``, ``amqp``... with ``--app``; without it, ``amqp`` when the policy is evidently
    for RabbitMQ (it gives ``consumer_timeout``, queue types or the broker's dead-letter queues), else None."""
    if ctx.app is not None:
        return ctx.app.broker_scheme
    document = ctx.document
    routes = [document.defaults.route, *(task.route for task in document.tasks.values())]
    if (
        document.worker.consumer_timeout is not None
        or ctx.options.consumer_timeout_s is not None
        or document.dead_letter_store.backend == "amqp"
        or any(route is not None and route.queue_type is not None for route in routes)
    ):
        return "amqp"
    return None


_MISSING = object()


def _policy_delayed_delivery(ctx: LintContext, broker: str | None) -> bool:
    """celery-policy's delayed delivery holds the countdowns: ``worker.delayed_delivery: true``, or unset
    (its default: on with reliable fetch, i.e. a Redis broker, late ack and ``reliable_fetch`` not false),
    on a broker ``celery_policy.transport.DELAYED_DELIVERY_BROKERS`` lists. False while the model has no
    such key."""
    worker = ctx.document.worker
    wanted = getattr(worker, "delayed_delivery", _MISSING)
    if wanted is _MISSING or wanted is False or broker is None:
        return False
    transport = importlib.import_module("celery_policy.transport")
    if broker not in getattr(transport, "DELAYED_DELIVERY_BROKERS", ("redis",)):
        return False
    if wanted is None:  # the default follows reliable fetch
        late = any(view.policy.ack.late for view in ctx.views())
        return broker == "redis" and late and worker.reliable_fetch is not False
    return wanted is True


def _native_delayed_delivery(ctx: LintContext, view: View) -> bool:
    """RabbitMQ keeps the countdown (Celery 5.5+ native delayed delivery): the app has a quorum queue and the
    task's queue is bound to a topic or fanout exchange."""
    app = ctx.app
    if app is None or app.broker_scheme != "amqp" or not app.has_setting((5, 5)):
        return False
    declared = app.declared_queues or {}
    types = app.declared_queue_types()
    asked = [v.policy.route.queue_type for v in ctx.views() if v.policy.route is not None]
    if "quorum" not in (*types.values(), app.default_queue_type, *asked):
        return False
    queue = _queue(ctx, view)
    info = declared.get(queue)
    exchange = info.exchange_type if info is not None and info.exchange_type else app.default_exchange_type
    return exchange in NATIVE_DELAY_EXCHANGES


def _out_of_worker(ctx: LintContext, view: View, broker: str | None) -> bool:
    return _policy_delayed_delivery(ctx, broker) or _native_delayed_delivery(ctx, view)


def _consumer_timeout(ctx: LintContext, view: View) -> tuple[float, str]:
    """The consumer timeout of the task's queue and where it comes from."""
    app = ctx.app
    if app is not None:
        info = (app.declared_queues or {}).get(_queue(ctx, view))
        if info is not None and info.consumer_timeout_s is not None:
            return info.consumer_timeout_s, f"x-consumer-timeout of queue '{trim(info.name)}'"
    if ctx.document.worker.consumer_timeout is not None:
        return ctx.document.worker.consumer_timeout, "worker.consumer_timeout"
    if ctx.options.consumer_timeout_s is not None:
        return ctx.options.consumer_timeout_s, "consumer-timeout in [tool.celery-policy]"
    return CONSUMER_TIMEOUT_DEFAULT_S, "RabbitMQ's default"


@rule("CP220", "consumer-timeout", severity="warning")
def consumer_timeout(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when a retry delay, or a late-acked task's hard timeout, is longer than
    RabbitMQ's `consumer_timeout`.

    Applies to RabbitMQ: an AMQP broker with `--app`, or without it a policy
    that is evidently for RabbitMQ (it sets `worker.consumer_timeout`,
    `route.queue_type` or `dead_letter_store.backend: amqp`, or
    `[tool.celery-policy]` sets `consumer-timeout`). The timeout is the queue's
    `x-consumer-timeout` in the app's `task_queues`, else `worker.consumer_timeout`,
    else `consumer-timeout` in `[tool.celery-policy]`, else 30m (RabbitMQ's
    default). A client cannot read the broker's value (it is in rabbitmq.conf;
    only the management API and `rabbitmqctl` show it), so say it when it is
    not the default. Retries that RabbitMQ delays itself (native delayed
    delivery on quorum queues, Celery 5.5+) are not held by the worker and are
    left alone.

    Why: a worker holds a countdown retry unacknowledged until it is due; a
    delivery unacknowledged for longer than `consumer_timeout` makes RabbitMQ
    close the worker's channel (PRECONDITION_FAILED), the worker restarts and
    every message it held is delivered again (celery/celery#6760).

    Example:
        bad:  retry: {on: [transient], max_retries: 10, backoff: {max: 1h}}     (consumer_timeout 30m)
        good: retry: {on: [transient], max_retries: 10, backoff: {max: 20m}}, or worker: {consumer_timeout: 2h}
    """
    broker = _broker(ctx)
    if broker != "amqp":
        return
    for view in ctx.views():
        limit, origin = _consumer_timeout(ctx, view)
        where = f"RabbitMQ's consumer_timeout {_d(limit)} ({origin})"
        hint = (
            "the broker closes the channel and redelivers everything the worker held: keep the delay and hard timeout "
            "below it, or raise consumer_timeout on the broker and set worker.consumer_timeout to match"
        )
        if not _out_of_worker(ctx, view, broker):
            for budget in budgets(view.policy.retry):
                worst = longest_delay(budget.backoff, budget.retries, budget.delay_from)
                if worst <= limit:
                    continue
                path = _delay_path(view, budget, ("worker", "consumer_timeout"))
                message = f"{budget.label} can wait {_d(worst)} before a retry, longer than {where}"
                yield Diagnostic("CP220", message, ctx.key_locate(path), hint, path=render_path(path))
        policy = view.policy
        hard = policy.timeout.hard if policy.timeout.hard is not None else policy.timeout.soft
        if policy.ack.late and hard is not None and hard > limit:
            _, path = view.blame(_HARD if policy.timeout.hard is not None else _SOFT, ("ack", "late"))
            message = f"a late-acked task may run {_d(hard)}, longer than {where}"
            yield Diagnostic("CP220", message, ctx.key_locate(path), hint, path=render_path(path))


def _late_views(ctx: LintContext) -> list[View]:
    app_late = ctx.app is not None and ctx.app.task_acks_late
    return [view for view in ctx.views() if view.policy.ack.late or app_late]


def _late_path(ctx: LintContext, views: list[View]) -> KeyPath:
    """The `ack.late` key of the first late-acked view, else the top of the file."""
    for view in views:
        if view.owner(("ack", "late")) >= 0:
            return view.blame(("ack", "late"))[1]
    return ("defaults",) if "defaults" in ctx.document.model_fields_set else ()


@rule("CP221", "soft-shutdown-missing", severity="warning", needs_app=True)
def soft_shutdown_missing(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when tasks ack late on SQS, or on Redis without reliable fetch, with Celery
    5.5 or newer and no `worker_soft_shutdown_timeout` in the app.

    Needs `--app` (the broker, the Celery release and the setting are the
    app's). On Redis, celery-policy's reliable fetch (on by default with late
    ack) gives a dead worker's messages back after its heartbeat lapses, so
    only `worker.reliable_fetch: false` counts there.

    Why: a deploy sends SIGTERM; a worker that must stop before its running
    tasks finish exits with their messages unacknowledged, and the broker
    delivers them again only after the visibility timeout (1h on Redis by
    default). Soft shutdown (Celery 5.5) gives the tasks that time to finish
    and then hands the messages back at once.

    Example:
        bad:  defaults: {ack: {late: true}}              (SQS broker, worker_soft_shutdown_timeout unset)
        good: app.conf.worker_soft_shutdown_timeout = 60 with defaults: {ack: {late: true}}
    """
    app = ctx.app
    if app is None or app.broker_scheme not in {"redis", "sqs"} or not app.has_setting((5, 5)):
        return
    if app.soft_shutdown_timeout_s is not None and app.soft_shutdown_timeout_s > 0:
        return
    if app.broker_scheme == "redis" and ctx.document.worker.reliable_fetch is not False:
        return
    late = _late_views(ctx)
    if not late:
        return
    version = ".".join(str(part) for part in app.celery_version)
    message = (
        f"late ack on {app.broker_scheme} without worker_soft_shutdown_timeout (Celery {version}): a SIGTERM "
        "leaves running tasks' messages unacknowledged until the visibility timeout"
    )
    hint = (
        f"set worker_soft_shutdown_timeout in the app {app.spec} (seconds the tasks get to finish, e.g. 60); "
        "Celery then requeues their messages at once"
    )
    path = _late_path(ctx, late)
    yield Diagnostic("CP221", message, ctx.key_locate(path), hint, path=render_path(path))


def _visibility(ctx: LintContext) -> tuple[float, str] | None:
    """The visibility timeout (Redis/SQS), as CP205 finds it, or None for brokers without one."""
    app = ctx.app
    if app is None or app.broker_scheme not in {"redis", "sqs"}:
        return None
    if ctx.document.worker.visibility_timeout is not None:
        return ctx.document.worker.visibility_timeout, "worker.visibility_timeout"
    if app.visibility_timeout_s is not None:
        explicit = "visibility_timeout" in app.broker_transport_options
        return (
            app.visibility_timeout_s,
            "the app's broker_transport_options" if explicit else f"the {app.broker_scheme} default",
        )
    return None


@rule("CP222", "deduplication-window", severity="warning", needs_app=True)
def deduplication_window(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns about `worker_deduplicate_successful_tasks` where it cannot work: no task acks
    late, the app has no result backend, or results expire (`result_expires`) before a redelivered
    copy can arrive.

    Needs `--app` (the setting is the app's). The redelivery window is the
    broker's visibility timeout on Redis and SQS (`worker.visibility_timeout`,
    else the app's `broker_transport_options`, else 1h); `result_expires` is
    the policy's `worker.result_expires`, else the app's (Celery's default 1d).

    Why: the worker skips a redelivered message only when the result backend
    still says SUCCESS for its id, and it looks only with late ack and a
    persistent backend. Results that expire first let the duplicate run again.

    Example:
        bad:  worker: {result_expires: 10m, visibility_timeout: 1h}    (worker_deduplicate_successful_tasks = True)
        good: worker: {result_expires: 1d, visibility_timeout: 1h}
    """
    app = ctx.app
    if app is None or not app.deduplicate_successful_tasks:
        return
    late = _late_views(ctx)
    top: KeyPath = ("defaults",) if "defaults" in ctx.document.model_fields_set else ()
    if not late:
        message = "worker_deduplicate_successful_tasks has no effect: no task acks late"
        hint = "Celery deduplicates only late-acked tasks; set ack.late: true or drop the setting"
        yield Diagnostic("CP222", message, ctx.key_locate(top), hint, path=render_path(top))
        return
    backend = (app.result_backend or "").split(":", 1)[0].lower()
    if backend in {"", "disabled", "rpc"}:
        shown = app.result_backend or "none"
        message = f"worker_deduplicate_successful_tasks needs a persistent result backend, the app has {shown}"
        hint = "set result_backend to Redis or a database; the worker looks the task's state up there"
        late_path = _late_path(ctx, late)
        yield Diagnostic("CP222", message, ctx.key_locate(late_path), hint, path=render_path(late_path))
        return
    window = _visibility(ctx)
    if window is None:
        return
    limit, origin = window
    if ctx.document.worker.result_expires is not None:
        expires, expires_origin = ctx.document.worker.result_expires, "worker.result_expires"
        path: KeyPath = ("worker", "result_expires")
    else:
        if app.result_expires_s is None or app.result_expires_s <= 0:
            return  # results are kept for good
        expires, expires_origin = app.result_expires_s, "the app's result_expires"
        path = ("worker", "visibility_timeout") if ctx.document.worker.visibility_timeout is not None else top
    if expires >= limit:
        return
    message = (
        f"results expire after {_d(expires)} ({expires_origin}), before a redelivered copy can arrive "
        f"(visibility timeout {_d(limit)}, {origin}): worker_deduplicate_successful_tasks forgets it ran"
    )
    hint = "keep results at least as long as the visibility timeout (worker.result_expires), or lower the timeout"
    yield Diagnostic("CP222", message, ctx.key_locate(path), hint, path=render_path(path))


def _per_second(rate_limit: str | None) -> float | None:
    """Celery's rate limit string (``10/s``, ``100/m``, ``5/h``, ``10``) as tasks per second."""
    if not rate_limit:
        return None
    number, _, unit = rate_limit.partition("/")
    try:
        value = float(number)
    except ValueError:
        return None
    return value / {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit, 1.0)


@rule("CP223", "eta-task-limit", severity="warning", needs_app=True)
def eta_task_limit(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when retries can wait long (10m or more) in worker memory while the app leaves
    `worker_eta_task_limit` unset (Celery 5.6+).

    Needs `--app` (the setting and the Celery release are the app's). A task's
    `rate_limit` bounds its retries per second: a task whose longest delay
    times that rate stays under 1000 held messages is left alone. Retries that
    delayed delivery keeps out of the worker are left alone (native delayed
    delivery on RabbitMQ quorum queues; celery-policy's `worker.delayed_delivery`
    on Redis, where the policy format has that key).

    Why: a worker keeps each countdown retry in memory until it is due and
    raises its prefetch count for it; with long backoffs and an outage
    that makes every task retry, the held messages grow without bound until
    the worker runs out of memory.

    Example:
        bad:  retry: {on: [transient], max_retries: 10, backoff: {max: 1h}}      (worker_eta_task_limit unset)
        good: app.conf.worker_eta_task_limit = 1000, or retry: {backoff: {max: 5m}}
    """
    app = ctx.app
    if app is None or not app.has_setting((5, 6)) or app.eta_task_limit is not None:
        return
    broker = app.broker_scheme
    for view in ctx.views():
        if _out_of_worker(ctx, view, broker):
            continue
        rate = _per_second(view.policy.rate_limit)
        for budget in budgets(view.policy.retry):
            worst = longest_delay(budget.backoff, budget.retries, budget.delay_from)
            if worst < ETA_LONG_DELAY_S or (rate is not None and rate * worst < ETA_HELD_MESSAGES):
                continue
            if rate is not None:
                volume = f"at its rate_limit {view.policy.rate_limit} a worker may hold {int(rate * worst):,} of them"
            else:
                volume = f"each retry per second adds {int(worst):,} messages a worker holds"
            message = (
                f"{budget.label} can keep a retry in worker memory for {_d(worst)} with worker_eta_task_limit "
                f"unset: {volume}"
            )
            hint = (
                f"set worker_eta_task_limit in the app {app.spec} (e.g. 1000), shorten the backoff, or keep retries "
                "out of the worker with delayed delivery"
            )
            path = _delay_path(view, budget, ("defaults",))
            yield Diagnostic("CP223", message, ctx.key_locate(path), hint, path=render_path(path))
