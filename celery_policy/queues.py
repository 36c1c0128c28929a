"""RabbitMQ queue planning from the policy, without Celery: what each queue must be declared with.

What the policy asks of a queue becomes its declaration arguments:

- ``route.queue_type`` -> ``x-queue-type``;
- on a quorum queue, with the ``amqp`` dead-letter store: ``ack.max_redeliveries``
  -> ``x-delivery-limit`` plus ``x-dead-letter-exchange: ""`` and
  ``x-dead-letter-routing-key: <queue>.dead``, so the broker itself stops a poison
  pill that kills its worker and moves it to the dead queue (a classic queue has
  no delivery limit; there only the Redis counter can cap redeliveries);
- ``route.priority`` -> ``x-max-priority`` (classic queues; quorum queues refuse it).

The worker's boot wiring (``runtime/amqp.py``), the ``dlq`` commands and the
CP2xx/CP3xx lint rules all read the plan from here, so ``celery-policy check``
can plan queues without importing Celery; only :func:`declare_queues` talks to
a broker (kombu, imported when it is called).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_policy.errors import PolicyError
from celery_policy.model import RoutePolicy
from celery_policy.resolve import Policy

DEAD_SUFFIX = ".dead"
# What every dead queue is declared with, by the store and by the worker's boot check alike
# (two declarations with different arguments fail with PRECONDITION_FAILED).
DEAD_QUEUE_ARGUMENTS: Mapping[str, Any] = {"x-queue-type": "classic"}
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})


def is_amqp_url(url: str | None) -> bool:
    return bool(url) and str(url).split("://", 1)[0].lower() in AMQP_SCHEMES


def store_backend(settings: Any, broker_url: str | None) -> str | None:
    """Which store ``dead_letter_store`` resolves to with this broker: "redis", "amqp", or None (none derivable).

    ``backend: auto`` is amqp when ``url`` is an AMQP URL, or when no url is set and
    the broker is AMQP; otherwise redis (the store's URL or the Redis broker's).
    """
    backend = getattr(settings, "backend", "auto")
    url = getattr(settings, "url", None)
    if backend == "amqp":
        return "amqp" if is_amqp_url(url) or (not url and is_amqp_url(broker_url)) else None
    if backend == "redis":
        return "redis" if url or (broker_url or "").split("://", 1)[0] in {"redis", "rediss"} else None
    if url:
        return "amqp" if is_amqp_url(url) else "redis"
    if is_amqp_url(broker_url):
        return "amqp"
    return "redis" if (broker_url or "").split("://", 1)[0] in {"redis", "rediss"} else None


def dead_queue_for(queue: str) -> str:
    return queue + DEAD_SUFFIX


def declare_dead_queue(channel: Any, dead: str) -> None:
    channel.queue_declare(dead, durable=True, auto_delete=False, arguments=dict(DEAD_QUEUE_ARGUMENTS))


def queue_of(route: RoutePolicy | None, default_queue: str) -> str:
    """The queue a task with ``route`` is sent to."""
    return route.queue if route is not None and route.queue else default_queue


def queue_type_of(
    queue: str,
    asked: str | None,
    *,
    declared: Mapping[str, str] | None,
    default_queue: str,
    default_queue_type: str,
) -> str:
    """The type ``queue`` is declared with: what the policy asks (``route.queue_type``), else the app's
    ``task_queues`` declaration, else Celery's ``task_default_queue_type`` for the default queue, else classic."""
    return asked or (declared or {}).get(queue) or (default_queue_type if queue == default_queue else "classic")


DEFAULTS_TASK = "\x00defaults"  # a task name no pattern but "*" matches: the defaults layer alone


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
    names = [DEFAULTS_TASK, *policy.document.tasks, *task_names]
    for name in dict.fromkeys(names):
        resolved = policy.for_task(name).policy
        route = resolved.route
        queue = queue_of(route, default_queue)
        label = "defaults" if name == DEFAULTS_TASK else f"tasks.{name}"
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
        effective = queue_type_of(
            queue,
            queue_type,
            declared=declared_types,
            default_queue=default_queue,
            default_queue_type=default_queue_type,
        )
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
