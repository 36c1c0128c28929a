"""celery_policy.delivery: which broker deadline applies, from the policy and the broker scheme alone."""

from __future__ import annotations

import pytest

from celery_policy.delivery import countdowns_held_by_consumer, delayed_delivery_on, reliable_fetch_on
from celery_policy.model import PolicyDocument


def doc(worker: dict[str, object] | None = None, late: bool = False) -> PolicyDocument:
    data: dict[str, object] = {"version": 1, "defaults": {"ack": {"late": late}}}
    if worker:
        data["worker"] = worker
    return PolicyDocument.model_validate(data)


@pytest.mark.parametrize(
    ("worker", "late", "scheme", "leases", "delayed"),
    [
        (None, True, "redis", True, True),  # late ack on Redis: reliable fetch, delayed delivery by default
        (None, True, None, True, True),  # no --app: Redis is assumed
        (None, False, "redis", False, False),
        ({"reliable_fetch": True}, False, "rediss", True, True),
        ({"delayed_delivery": False}, True, "redis", True, False),
        ({"reliable_fetch": False, "delayed_delivery": True}, True, "redis", False, False),  # needs reliable fetch
        (None, True, "amqp", False, False),  # RabbitMQ: off unless asked for
        ({"delayed_delivery": True}, True, "amqp", False, True),  # the TTL bucket queues
        ({"delayed_delivery": True}, True, "sqs", False, False),
    ],
)
def test_leases_and_delayed_delivery_follow_the_runtime_decision(
    worker: dict[str, object] | None, late: bool, scheme: str | None, leases: bool, delayed: bool
) -> None:
    document = doc(worker, late)
    assert reliable_fetch_on(document, scheme) is leases
    assert delayed_delivery_on(document, scheme) is delayed
    assert countdowns_held_by_consumer(document, scheme) is (not delayed)
