"""RabbitMQ at worker boot: the policy's queue arguments on Celery's queue objects, and the check that
they fit the broker's existing queues.

The plan (which queue needs which ``x-`` arguments) is :mod:`celery_policy.queues`.
This module puts it on ``task_queues`` and on the queues Celery creates on
demand, so every declaration the worker and producers make carries it.

A queue's arguments cannot change once it exists; declaring it with others
fails with PRECONDITION_FAILED and a worker retries that forever. So the worker
declares its queues once at boot (:class:`QueueCheck`) and stops with a
:class:`PolicyError` that names the queue, the argument and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import bootsteps

from celery_policy.errors import PolicyError
from celery_policy.queues import (
    DEFAULTS_TASK,
    QueuePlan,
    declare_queues,
    is_amqp_url,
    merge_arguments,
    plan_queues,
    store_backend,
)
from celery_policy.resolve import Policy


def configure_queues(app: Any, plans: Mapping[str, QueuePlan]) -> None:
    """Put the planned arguments on the app's queue declarations (before any is used).

    The default queue goes into ``task_queues`` when the app sets none (as
    Celery would create it); queues the app declares in ``task_queues`` get
    the arguments merged in; every other planned queue gets them when Celery
    creates it on demand (a route or ``-Q``), so a worker's set of consumed
    queues does not change.
    """
    from celery.app.amqp import Queues
    from kombu.entity import Exchange, Queue

    conf = app.conf
    wanted = {name: plan.arguments() for name, plan in plans.items() if plan.arguments()}
    if not wanted:
        return
    declared = conf.task_queues
    if declared:
        for queue in declared:
            name = getattr(queue, "name", None)
            if name in wanted:
                queue.queue_arguments = merge_arguments(name, queue.queue_arguments, wanted[name])
    else:
        default = conf.task_default_queue
        if default in wanted:
            arguments = dict(wanted[default])
            if conf.get("task_default_queue_type") == "quorum":  # the setting exists from Celery 5.5 on
                arguments = merge_arguments(default, {"x-queue-type": "quorum"}, arguments)
            exchange = Exchange(conf.task_default_exchange, conf.task_default_exchange_type)  # type: ignore[no-untyped-call]
            queue = Queue(default, exchange, conf.task_default_routing_key, queue_arguments=arguments)  # type: ignore[no-untyped-call]
            conf.task_queues = (queue,)

    class PolicyQueues(Queues):  # type: ignore[misc]  # celery is untyped
        def new_missing(self, name: str) -> Any:
            queue = super().new_missing(name)
            if name in wanted:
                queue.queue_arguments = merge_arguments(name, queue.queue_arguments, wanted[name])
            return queue

    app.amqp.queues_cls = PolicyQueues
    app.amqp.__dict__.pop("queues", None)  # a cached_property: rebuild with the new class and settings


# -- wiring for install() ------------------------------------------------------------------------------------

_PLAN_ATTR = "_celery_policy_queue_plan"


def broker_url_of(app: Any) -> str | None:
    try:
        url = app.conf.broker_url or app.conf.broker_write_url
    except Exception:  # an unloadable config: no broker to derive from
        return None
    if isinstance(url, (list, tuple)):
        url = url[0] if url else None
    return str(url) if url else None


def plan_for(app: Any, policy: Policy) -> dict[str, QueuePlan] | None:
    """The queue plan of ``app`` under ``policy`` when its broker is AMQP, else None. Raises PolicyError."""
    broker = broker_url_of(app)
    if not is_amqp_url(broker):
        return None
    conf = app.conf
    plans = plan_queues(
        policy,
        default_queue=str(conf.task_default_queue or "celery"),
        default_queue_type=str(conf.get("task_default_queue_type") or "classic"),
        amqp_store=store_backend(policy.document.dead_letter_store, broker) == "amqp",
        declared_types=declared_queue_types(conf.task_queues),
    )
    _check_quorum_support(policy, plans)
    return plans


def _check_quorum_support(policy: Policy, plans: Mapping[str, QueuePlan]) -> None:
    """Quorum queues refuse a global QoS, which workers before Celery 5.5 always set on RabbitMQ."""
    from celery_policy.support import celery_consumes_quorum_queues

    asked = {name: plan.sources["x-queue-type"] for name, plan in plans.items() if plan.queue_type == "quorum"}
    if not asked or celery_consumes_quorum_queues():
        return
    queue, label = sorted(asked.items())[0]
    path = ("defaults",) if label == "defaults" else ("tasks", label.removeprefix("tasks."))
    where = policy.location((*path, "route", "queue_type")) or policy.files[0]
    msg = (
        f"{where}: route.queue_type: quorum (queue '{queue}') needs Celery 5.5 or newer: older workers set a "
        "global QoS on RabbitMQ, which quorum queues refuse (NOT_IMPLEMENTED at the first consume)\n"
        "  help: upgrade Celery, or use route.queue_type: classic"
    )
    raise PolicyError(msg)


def declared_queue_types(queues: Any) -> dict[str, str]:
    """``x-queue-type`` of the queues an app declares in ``task_queues``."""
    found: dict[str, str] = {}
    for queue in queues or ():
        arguments = getattr(queue, "queue_arguments", None) or {}
        if getattr(queue, "name", None) and arguments.get("x-queue-type"):
            found[str(queue.name)] = str(arguments["x-queue-type"])
    return found


def apply_plan(app: Any, policy: Policy, plans: Mapping[str, QueuePlan] | None) -> None:
    """Put the arguments on the app's queues and check them against the broker when a worker boots."""
    if plans is None:
        return
    configure_queues(app, plans)
    setattr(app, _PLAN_ATTR, (policy, dict(plans)))
    app.steps["worker"].add(QueueCheck)


def amqp_store_for(app: Any, policy: Policy) -> Any:
    """The :class:`AmqpDeadLetterStore` when the policy's store resolves to the broker's dead queues, else None."""
    from celery_policy.deadletter.amqp import AmqpDeadLetterStore

    settings = policy.document.dead_letter_store
    broker = broker_url_of(app)
    if store_backend(settings, broker) != "amqp":
        return None
    url = settings.url or broker
    where = policy.location(("dead_letter_store",)) or policy.files[0]
    names = [DEFAULTS_TASK, *policy.document.tasks]
    if any(policy.for_task(name).policy.idempotency is not None for name in names):
        msg = (
            "idempotency keys need Redis but the dead-letter store is the AMQP broker; "
            f"set dead_letter_store.url to a Redis URL ({where})"
        )
        raise PolicyError(msg)
    plans = plan_for(app, policy) or {}
    return AmqpDeadLetterStore(
        str(url),
        list(plans),
        default_queue=str(app.conf.task_default_queue or "celery"),
        delivery_limits={name: plan.delivery_limit for name, plan in plans.items() if plan.delivery_limit is not None},
    )


class QueueCheck(bootsteps.Step):  # type: ignore[misc]  # celery is untyped
    """Worker boot: declare the planned queues now, so a conflicting existing queue stops the worker with a
    PolicyError instead of a consumer that retries PRECONDITION_FAILED forever."""

    name = "celery-policy queue check"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        found = getattr(worker.app, _PLAN_ATTR, None)
        if found is None:
            return
        policy, plans = found
        url = broker_url_of(worker.app) or "amqp://"
        where = str(policy.files[0]) if policy.files else ""
        declare_queues(url, plans.values(), where=where)


def cli_store(url: str | None, policy: Policy | None, broker_url: str | None, app: Any = None) -> Any:
    """The store ``celery-policy dlq`` reads when it is the broker's dead queues (an ``amqp://`` ``--url``,
    or ``dead_letter_store`` resolving to amqp with the ``--app``'s broker), else None.

    The dead queues read are those of the queues the policy routes to, plus the
    default queue (the ``--app``'s ``task_default_queue``, else ``celery``).
    """
    from celery_policy.deadletter.amqp import AmqpDeadLetterStore

    settings = policy.document.dead_letter_store if policy is not None else None
    found: str | None
    if url:
        if not is_amqp_url(url):
            return None
        found = url
    elif settings is not None and store_backend(settings, broker_url) == "amqp":
        found = settings.url or broker_url
    else:
        return None
    conf = app.conf if app is not None else None
    default_queue = str(conf.task_default_queue) if conf is not None and conf.task_default_queue else "celery"
    default_type = str(conf.get("task_default_queue_type") or "classic") if conf is not None else "classic"
    plans = (
        plan_queues(policy, default_queue=default_queue, default_queue_type=default_type, amqp_store=True)
        if policy is not None
        else {}
    )
    return AmqpDeadLetterStore(
        str(found),
        list(plans),
        default_queue=default_queue,
        delivery_limits={name: plan.delivery_limit for name, plan in plans.items() if plan.delivery_limit is not None},
    )
