"""RabbitMQ queue arguments from the policy, and the boot check that they fit the broker's queues.

What the policy asks of a queue becomes its declaration arguments, through
Celery's own queue objects (``task_queues`` and the queues Celery creates on
demand), so every declaration the worker and producers make carries them:

- ``route.queue_type`` -> ``x-queue-type``;
- on a quorum queue, with the ``amqp`` dead-letter store: ``ack.max_redeliveries``
  -> ``x-delivery-limit`` plus ``x-dead-letter-exchange: ""`` and
  ``x-dead-letter-routing-key: <queue>.dead``, so the broker itself stops a poison
  pill that kills its worker and moves it to the dead queue (a classic queue has
  no delivery limit; there only the Redis counter can cap redeliveries);
- ``route.priority`` -> ``x-max-priority`` (classic queues; quorum queues refuse it).

A queue's arguments cannot change once it exists; declaring it with others
fails with PRECONDITION_FAILED and a worker retries that forever. So the worker
declares its queues once at boot (:class:`QueueCheck`) and stops with a
:class:`PolicyError` that names the queue, the argument and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import bootsteps

from celery_policy.deadletter.amqp import DEAD_QUEUE_ARGUMENTS, dead_queue_for, declare_dead_queue
from celery_policy.errors import PolicyError
from celery_policy.resolve import Policy

_DEFAULTS = "\x00defaults"  # a task name no pattern but "*" matches: the defaults layer alone


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """What the policy needs of one queue."""

    name: str
    queue_type: str | None = None  # x-queue-type; None: whatever Celery declares
    delivery_limit: int | None = None  # x-delivery-limit (quorum, amqp store)
    max_priority: int | None = None  # x-max-priority (classic)
    dead_queue: str | None = None  # where records (and broker dead letters) of this queue go, amqp store
    sources: Mapping[str, str] = field(default_factory=dict)  # argument -> task or layer that asked for it

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.queue_type is not None:
            args["x-queue-type"] = self.queue_type
        if self.delivery_limit is not None:
            args["x-delivery-limit"] = self.delivery_limit
            args["x-dead-letter-exchange"] = ""  # the default exchange routes by queue name
            args["x-dead-letter-routing-key"] = dead_queue_for(self.name)
        if self.max_priority is not None:
            args["x-max-priority"] = self.max_priority
        return args


def plan_queues(
    policy: Policy,
    *,
    default_queue: str = "celery",
    default_queue_type: str = "classic",
    amqp_store: bool = False,
    task_names: Iterable[str] = (),
    declared_types: Mapping[str, str] | None = None,
) -> dict[str, QueuePlan]:
    """The queues the policy routes to (the default queue included) and the arguments each needs.

    Looks at the defaults, every name and pattern under ``tasks`` and
    ``task_names``; ``declared_types`` are the ``x-queue-type`` of queues the app
    declares itself (``task_queues``). Raises :class:`PolicyError` when tasks sharing a queue
    ask for different queue types. Tasks sharing a quorum queue with different
    ``max_redeliveries`` get the smallest as the queue's limit (``check`` warns).
    """
    types: dict[str, dict[str, str]] = {}
    limits: dict[str, dict[str, int]] = {}
    priorities: dict[str, dict[str, int]] = {}
    names = [_DEFAULTS, *policy.document.tasks, *task_names]
    for name in dict.fromkeys(names):
        resolved = policy.for_task(name).policy
        route = resolved.route
        queue = route.queue if route is not None and route.queue else default_queue
        label = "defaults" if name == _DEFAULTS else f"tasks.{name}"
        types.setdefault(queue, {})
        if route is not None and route.queue_type is not None:
            types[queue][label] = route.queue_type
        ack = resolved.ack
        if ack.late and ack.max_redeliveries is not None:
            limits.setdefault(queue, {})[label] = ack.max_redeliveries
        if route is not None and route.priority:
            priorities.setdefault(queue, {})[label] = route.priority
    plans: dict[str, QueuePlan] = {}
    for queue, asked in types.items():
        distinct = sorted(set(asked.values()))
        if len(distinct) > 1:
            who = ", ".join(f"{value} ({label})" for label, value in sorted(asked.items()))
            msg = f"tasks routed to queue '{queue}' ask for different route.queue_type: {who}"
            raise PolicyError(msg)
        queue_type = distinct[0] if distinct else None
        declared = (declared_types or {}).get(queue)
        effective = queue_type or declared or (default_queue_type if queue == default_queue else "classic")
        sources: dict[str, str] = {}
        if queue_type is not None:
            sources["x-queue-type"] = next(iter(sorted(asked)))
        limit = None
        if amqp_store and effective == "quorum" and limits.get(queue):
            label, limit = min(limits[queue].items(), key=lambda item: (item[1], item[0]))
            sources["x-delivery-limit"] = label
        priority = None
        if effective != "quorum" and priorities.get(queue):
            label, priority = max(priorities[queue].items(), key=lambda item: (item[1], item[0]))
            sources["x-max-priority"] = label
        plans[queue] = QueuePlan(
            queue,
            queue_type=queue_type,
            delivery_limit=limit,
            max_priority=priority,
            dead_queue=dead_queue_for(queue) if amqp_store else None,
            sources=sources,
        )
    return plans


def merge_arguments(queue: str, declared: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """``declared`` (the app's own ``queue_arguments``) with ``wanted`` added; PolicyError where they differ."""
    merged = dict(declared or {})
    for key, value in wanted.items():
        if key in merged and merged[key] != value:
            msg = (
                f"queue '{queue}': the app declares {key}={merged[key]!r} in task_queues but the policy needs {value!r}"
            )
            raise PolicyError(msg)
        merged[key] = value
    return merged


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


def declare_queues(
    url: str, plans: Iterable[QueuePlan], *, create: bool = True, where: str = "", connect_timeout_s: float = 10.0
) -> list[str]:
    """Declare each planned queue (and its dead queue) on the broker with the planned arguments.

    With ``create=False`` only queues that already exist are checked (nothing is
    created). Returns the names of the queues checked. Raises :class:`PolicyError`
    when an existing queue was declared with other arguments (PRECONDITION_FAILED),
    naming the queue, the argument and what to do; connection errors propagate.
    """
    from kombu.connection import Connection

    checked: list[str] = []
    with Connection(url, connect_timeout=connect_timeout_s) as connection:  # type: ignore[no-untyped-call]
        connection.connect()
        raw = connection.connection
        for plan in plans:
            targets: list[tuple[str, dict[str, Any], str | None]] = [(plan.name, plan.arguments(), None)]
            if plan.dead_queue is not None:
                targets.append((plan.dead_queue, dict(DEAD_QUEUE_ARGUMENTS), plan.name))
            for name, arguments, owner in targets:
                channel = raw.channel()
                try:
                    if not create:
                        try:
                            channel.queue_declare(name, passive=True)
                        except Exception as exc:
                            if getattr(exc, "reply_code", None) == 404:
                                channel = None
                                continue
                            raise
                    if owner is not None:
                        declare_dead_queue(channel, name)
                    else:
                        channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
                    checked.append(name)
                except Exception as exc:
                    if getattr(exc, "reply_code", None) != 406:
                        raise
                    channel = None  # the broker closed it
                    raise PolicyError(_conflict_message(name, arguments, exc, plan, owner, where)) from exc
                finally:
                    if channel is not None:
                        channel.close()
    return checked


def _conflict_message(
    name: str, arguments: Mapping[str, Any], exc: BaseException, plan: QueuePlan, owner: str | None, where: str
) -> str:
    reply = str(getattr(exc, "reply_text", "") or exc)
    needs = ", ".join(f"{key}={value!r}" for key, value in sorted(arguments.items())) or "no arguments"
    asked = ", ".join(f"{key} from {label}" for key, label in sorted(plan.sources.items()))
    role = f"dead queue of '{owner}'" if owner is not None else "queue"
    return (
        f"{role} '{name}' already exists on the broker with other arguments than the policy needs ({needs}): {reply}"
        + (f"; the policy sets {asked}" if asked and owner is None else "")
        + (f" ({where})" if where else "")
        + f"\n  help: a queue's arguments cannot change; drain and delete it (rabbitmqctl delete_queue {name}) so it "
        "is declared again, or make the policy match the existing queue"
    )


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
    from celery_policy.deadletter.amqp import is_amqp_url, store_backend

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
    from celery_policy.deadletter.amqp import AmqpDeadLetterStore, store_backend

    settings = policy.document.dead_letter_store
    broker = broker_url_of(app)
    if store_backend(settings, broker) != "amqp":
        return None
    url = settings.url or broker
    where = policy.location(("dead_letter_store",)) or policy.files[0]
    names = [_DEFAULTS, *policy.document.tasks]
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
    from celery_policy.deadletter.amqp import AmqpDeadLetterStore, is_amqp_url, store_backend

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
