"""Checks for RabbitMQ brokers (``--app`` with an AMQP broker): queue types, delivery limits, queue arguments.

CP209 (a reliability warning) and CP305-CP307 read the queue type and the
queue plan from :mod:`celery_policy.queues`, as the worker does at boot.
"""

from __future__ import annotations

from collections.abc import Iterator

from celery_policy.errors import Diagnostic, PolicyError, trim
from celery_policy.lint.appsnapshot import AppSnapshot
from celery_policy.lint.context import LintContext, View
from celery_policy.lint.registry import rule
from celery_policy.queues import (
    QueuePlan,
    declare_queues,
    is_amqp_url,
    merge_arguments,
    plan_queues,
    queue_of,
    queue_type_of,
    store_backend,
)
from celery_policy.resolve import Policy

QUORUM_DELIVERY_LIMIT_DEFAULT = 20  # RabbitMQ 4.0+


def _queue_of(ctx: LintContext, view: View) -> str:
    assert ctx.app is not None
    return queue_of(view.policy.route, ctx.app.default_queue)


def _queue_type(ctx: LintContext, view: View, queue: str) -> str:
    app = ctx.app
    assert app is not None
    route = view.policy.route
    return queue_type_of(
        queue,
        route.queue_type if route is not None else None,
        declared=app.declared_queue_types(),
        default_queue=app.default_queue,
        default_queue_type=app.default_queue_type,
    )


def _amqp_store(ctx: LintContext) -> bool:
    return ctx.app is not None and store_backend(ctx.document.dead_letter_store, ctx.app.broker_url) == "amqp"


def _plan(ctx: LintContext, app: AppSnapshot) -> dict[str, QueuePlan]:
    """The queue plan the worker would apply at boot. Raises PolicyError (conflicting queue types, CP110)."""
    return plan_queues(
        Policy(ctx.raw, ctx.env),
        default_queue=app.default_queue,
        default_queue_type=app.default_queue_type,
        amqp_store=_amqp_store(ctx),
        declared_types=app.declared_queue_types(),
    )


def _plans(ctx: LintContext) -> dict[str, QueuePlan] | None:
    app = ctx.app
    if app is None or not is_amqp_url(app.broker_url):
        return None
    try:
        return _plan(ctx, app)
    except PolicyError:  # pattern conflicts are CP110's; queue type conflicts are reported by CP307
        return None


def _capped_redeliveries(ctx: LintContext, *, on_worker_lost: bool = False) -> Iterator[tuple[View, int, str]]:
    """Views whose late ack caps broker redeliveries (``ack.max_redeliveries``), with the cap and their queue;
    ``on_worker_lost``: only those that also requeue on a lost worker (the redeliveries a queue limit counts)."""
    for view in ctx.views():
        ack = view.policy.ack
        if not ack.late or ack.max_redeliveries is None or (on_worker_lost and not ack.reject_on_worker_lost):
            continue
        yield view, ack.max_redeliveries, _queue_of(ctx, view)


@rule("CP305", "classic-queue-no-limit", severity="warning", needs_app=True)
def classic_queue_redeliveries(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns about `ack.max_redeliveries` on a RabbitMQ classic queue when the dead-letter
    store is the broker (`dead_letter_store.backend: amqp`, or `auto` with an AMQP broker and no url).

    Why: a classic queue has no delivery limit, and without Redis there is no
    redelivery counter either, so nothing caps a poison pill that kills its
    worker: it is redelivered forever. Use a quorum queue (the broker enforces
    `x-delivery-limit`) or a Redis `dead_letter_store.url`.

    Example:
        bad:  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 3}   (classic queue)
        good: route: {queue_type: quorum}
    """
    app = ctx.app
    if app is None or not is_amqp_url(app.broker_url) or not _amqp_store(ctx):
        return
    for view, cap, queue in _capped_redeliveries(ctx):
        if _queue_type(ctx, view, queue) == "quorum":
            continue
        _layer, path = view.blame(("ack", "max_redeliveries"))
        message = (
            f"ack.max_redeliveries {cap} is not enforced: classic queue '{trim(queue)}' has no "
            "delivery limit and the dead-letter store is the broker (no Redis counter)"
        )
        hint = "set route.queue_type: quorum (RabbitMQ then dead-letters at the limit) or a Redis dead_letter_store.url"
        yield ctx.diagnostic("CP305", message, path, hint)


@rule("CP306", "delivery-limit-shared", severity="warning", needs_app=True)
def delivery_limit_shared(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when a task allows more redeliveries than the delivery limit its quorum queue
    gets from the policy (the smallest `ack.max_redeliveries` of the tasks sharing the queue).

    Only with the broker as dead-letter store, where `ack.max_redeliveries`
    becomes the queue's `x-delivery-limit`. A queue has one limit; tasks
    sharing it cannot have different ones.

    Why: RabbitMQ dead-letters the message at the queue's limit, so the task
    gets fewer redeliveries than its policy says.

    Example:
        bad:  orders.charge: {ack: {max_redeliveries: 5}}   and   mail.send: {ack: {max_redeliveries: 1}}   on one queue
        good: route orders.charge to its own queue, or give both the same max_redeliveries
    """
    plans = _plans(ctx)
    if not plans:
        return
    for view, cap, queue in _capped_redeliveries(ctx):
        plan = plans.get(queue)
        if plan is None or plan.delivery_limit is None or cap <= plan.delivery_limit:
            continue
        _layer, path = view.blame(("ack", "max_redeliveries"))
        message = (
            f"ack.max_redeliveries {cap} exceeds the delivery limit {plan.delivery_limit} that "
            f"quorum queue '{trim(queue)}' gets from {plan.sources.get('x-delivery-limit', 'another task')}"
        )
        hint = "a queue has one x-delivery-limit: route this task to its own queue or align max_redeliveries"
        yield ctx.diagnostic("CP306", message, path, hint)


@rule("CP307", "queue-arguments-conflict", needs_app=True, needs_broker=True)
def queue_arguments_conflict(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports queues whose declaration the policy would change: tasks sharing a queue with
    different `route.queue_type`, arguments the app's `task_queues` already set otherwise, and (when the
    broker answers) existing queues on the broker declared with other arguments.

    The broker is only read (passive declarations); nothing is created.

    Why: a queue's arguments cannot change once it exists; the worker would
    fail to declare it (PRECONDITION_FAILED). celery-policy stops the worker at
    boot with this message; `check` says it before the deploy.

    Example:
        bad:  route: {queue_type: quorum}    (the existing 'celery' queue is classic)
        good: drain and delete the queue first, or keep route.queue_type: classic
    """
    app = ctx.app
    if app is None or not is_amqp_url(app.broker_url):
        return
    try:
        plans = _plan(ctx, app)
    except PolicyError as exc:
        if "route.queue_type" in str(exc):
            yield ctx.diagnostic("CP307", str(exc), ("tasks",), "tasks sharing a queue must agree on its type")
        return
    found = False
    for name, plan in plans.items():
        declared = (app.declared_queues or {}).get(name)
        if declared is None:
            continue
        existing: dict[str, object] = {}
        if declared.queue_type:
            existing["x-queue-type"] = declared.queue_type
        if declared.delivery_limit is not None:
            existing["x-delivery-limit"] = declared.delivery_limit
        try:
            merge_arguments(name, existing, plan.arguments())
        except PolicyError as exc:
            found = True
            yield ctx.diagnostic("CP307", str(exc), _path_of(plan), "make task_queues and the policy agree")
    if found:
        return
    try:
        declare_queues(app.broker_url, plans.values(), create=False, connect_timeout_s=3.0)
    except PolicyError as exc:
        message, _, hint = str(exc).partition("\n  help: ")
        culprit = next((p for p in plans.values() if f"'{p.name}'" in message), None)
        yield ctx.diagnostic("CP307", message, _path_of(culprit), hint or None)
    except Exception:  # broker unreachable: nothing to compare with (CP307 needs a reachable broker)
        pass


def _path_of(plan: QueuePlan | None) -> tuple[str, ...]:
    """Where to point: the task section that asked for the queue's arguments, else the defaults."""
    if plan is not None:
        for label in plan.sources.values():
            if label.startswith("tasks."):
                return ("tasks", label.removeprefix("tasks."), "route")
    return ("defaults",)


@rule("CP209", "quorum-delivery-limit", severity="warning", needs_app=True)
def quorum_delivery_limit(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when a task on a RabbitMQ quorum queue allows more redeliveries than the
    queue's delivery limit.

    The limit is the queue's `x-delivery-limit`, else 20 (RabbitMQ 4.0's
    default). Only broker redeliveries count (a lost worker with
    `reject_on_worker_lost`); Celery's own retries publish a new message and
    do not. Needs `--app` with an AMQP broker.

    Why: RabbitMQ drops (or dead-letters at the broker) the message first, so
    the policy's `max_redeliveries` cap and its dead-letter record never happen.

    Example:
        bad:  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 25}
        good: ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 5}
    """
    app = ctx.app
    if app is None or app.broker_scheme != "amqp":
        return
    amqp_store = _amqp_store(ctx)
    for view, cap, queue in _capped_redeliveries(ctx, on_worker_lost=True):
        if _queue_type(ctx, view, queue) != "quorum":
            continue
        declared = (app.declared_queues or {}).get(queue)
        limit = declared.delivery_limit if declared is not None else None
        if limit is None and amqp_store:
            continue  # install() declares x-delivery-limit = max_redeliveries: the broker enforces the policy's cap
        limit = limit if limit is not None else QUORUM_DELIVERY_LIMIT_DEFAULT
        if limit < 0 or cap < limit or (amqp_store and cap == limit):
            continue
        _layer, path = view.blame(("ack", "max_redeliveries"))
        message = f"ack.max_redeliveries {cap} is not below the delivery limit {limit} of quorum queue '{trim(queue)}'"
        hint = "RabbitMQ drops the message at its delivery limit first; lower max_redeliveries below it"
        yield ctx.diagnostic("CP209", message, path, hint)
