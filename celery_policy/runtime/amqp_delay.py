"""Delayed retries on RabbitMQ without holding the message in the consumer: TTL bucket queues.

Celery publishes a countdown retry with an ``eta`` and the worker that receives it
holds it unacked until due. Held longer than the broker's ``consumer_timeout``
(30 min by default since RabbitMQ 3.8.17), the broker closes the channel with
PRECONDITION_FAILED and the worker exits (celery/celery#6760).

With ``worker.delayed_delivery: true`` on an amqp:// broker, a policy retry whose
countdown is at least one second goes instead, with no ``eta``, to a bucket queue
``celery-policy.delay.<exchange>.<routing key>.<N>s``: declared with
``x-message-ttl`` N seconds (the smallest bucket not shorter than the countdown, so a
retry never runs early, and runs at most one bucket step late) and dead-lettering to
the exchange and routing key the message came from. Nobody consumes a bucket queue;
RabbitMQ moves each message back to its work queue when its TTL runs out. Countdowns
beyond the largest bucket (1 day) keep Celery's own ETA path.

The retried message's ``x-death``, ``x-first-death-*`` and ``x-last-death-*`` headers
(written by RabbitMQ on each trip through a bucket) are not copied into the next
retry (see :func:`celery_policy.runtime.headers.headers_to_copy`): RabbitMQ drops a
message that dead-letters into a queue its ``x-death`` already names with only
expirations in between, which would lose the retry (celery/celery#9867).

Celery 5.5+ has a delay path of its own for quorum queues bound to topic exchanges
(``celery_delayed_*`` exchanges); it applies to publishes that keep their ``eta``, so
the two never handle the same message.
"""

from __future__ import annotations

import bisect
from typing import Any

PREFIX = "celery-policy.delay"
BUCKETS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400)

__all__ = ["BUCKETS_S", "bucket_for", "bucket_queue", "retry_options"]


def bucket_for(countdown_s: float) -> int | None:
    """The bucket (seconds) a countdown waits in, or None when it is under 1 s or over the largest bucket."""
    if countdown_s < 1 or countdown_s > BUCKETS_S[-1]:
        return None
    return BUCKETS_S[bisect.bisect_left(BUCKETS_S, countdown_s)]


def bucket_name(exchange: str, routing_key: str, bucket_s: int) -> str:
    return f"{PREFIX}.{exchange or 'default'}.{routing_key}.{bucket_s}s"


def bucket_queue(exchange: str, routing_key: str, bucket_s: int) -> Any:
    """The kombu ``Queue`` of one bucket: TTL ``bucket_s``, dead-lettering back to ``exchange``/``routing_key``."""
    from kombu.entity import Exchange, Queue

    name = bucket_name(exchange, routing_key, bucket_s)
    arguments = {
        "x-message-ttl": int(bucket_s * 1000),
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": routing_key,
    }
    return Queue(name, Exchange("", type="direct"), routing_key=name, durable=True, queue_arguments=arguments)  # type: ignore[no-untyped-call]


def retry_options(request: Any, countdown_s: float) -> dict[str, Any] | None:
    """``Task.retry`` options that send the retry through a bucket queue, or None to keep Celery's ETA path."""
    bucket = bucket_for(countdown_s)
    delivery = getattr(request, "delivery_info", None) or {}
    routing_key = delivery.get("routing_key")
    if bucket is None or not routing_key:
        return None
    queue = bucket_queue(str(delivery.get("exchange") or ""), str(routing_key), bucket)
    # exchange/routing_key None: Celery derives them from the bucket queue (default exchange, its name)
    return {"queue": queue, "exchange": None, "routing_key": None, "countdown": 0}
