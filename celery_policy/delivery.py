"""Where a policy's messages wait while a task runs or a retry is due: what lint rules need to know.

The runtime decides the same at boot (``celery_policy.transport``), with the installed
kombu and the app's settings in hand; this module answers from the policy document and
the broker's URL scheme alone (``None`` when no ``--app`` names the broker, which lint
treats as Redis), so ``check`` can tell which broker deadline still applies:

- on Redis with reliable fetch, a live worker's messages are **leased**: the visibility
  timeout never restores them, however long the task runs or a countdown waits;
- with delayed delivery on top, countdown retries wait in the broker's delayed set,
  not in the worker (no memory held, nothing unacked);
- on RabbitMQ, with ``worker.delayed_delivery: true`` (off by default there), policy
  retries with a countdown of 1 s to 1 day wait in TTL bucket queues
  (``celery_policy.runtime.amqp_delay``), not in a consumer; otherwise a countdown retry is
  held unacked by the consumer until due, and the broker's ``consumer_timeout`` applies.
  A late-acked task's own run time is held by its consumer either way.
"""

from __future__ import annotations

from celery_policy.model import PolicyDocument

REDIS_SCHEMES = frozenset({"redis", "rediss"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})


def _late_ack_anywhere(document: PolicyDocument) -> bool:
    return document.defaults.ack.late or any(task.ack.late for task in document.tasks.values())


def reliable_fetch_on(document: PolicyDocument, scheme: str | None) -> bool:
    """True when workers take with reliable fetch (and so lease their messages) on this broker."""
    if scheme is not None and scheme not in REDIS_SCHEMES:
        return False
    setting = document.worker.reliable_fetch
    if setting is not None:
        return setting
    return _late_ack_anywhere(document)


def delayed_delivery_on(document: PolicyDocument, scheme: str | None) -> bool:
    """True when countdown retries (1 s or more) wait in the broker instead of being held by a worker."""
    if scheme in AMQP_SCHEMES:
        return document.worker.delayed_delivery is True  # TTL bucket queues, asked for explicitly
    if not reliable_fetch_on(document, scheme):
        return False  # Redis: it needs reliable fetch
    return document.worker.delayed_delivery is not False


def countdowns_held_by_consumer(document: PolicyDocument, scheme: str | None) -> bool:
    """True when a countdown retry waits unacked in a worker until due (RabbitMQ's consumer_timeout applies)."""
    return not delayed_delivery_on(document, scheme)
