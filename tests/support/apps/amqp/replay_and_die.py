"""Replay the dead queue of ``idle`` and die (``os._exit``) right after the broker confirmed publish number N.

Usage: python -m tests.support.apps.amqp.replay_and_die BROKER_URL N

That is the worst moment for a crash: the task is published again but its
record was not acked yet. The test then checks that the record is still in the
dead queue (a duplicate), never lost.
"""

from __future__ import annotations

import os
import sys

from celery import Celery

from celery_policy.deadletter.amqp import AmqpDeadLetterStore, confirmed_publisher
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter


def main(url: str, die_after: int) -> None:
    app = Celery("replay-and-die", broker=url)
    publish = confirmed_publisher(app)
    published = 0

    def publish_then_die(record: DeadLetter, task_id: str) -> None:
        nonlocal published
        publish(record, task_id)
        published += 1
        if published == die_after:
            sys.stdout.write(f"published {published}, dying before the ack\n")
            sys.stdout.flush()
            os._exit(9)

    AmqpDeadLetterStore(url, ["idle"], default_queue="idle").replay(Filter(), publish_then_die)
    sys.stdout.write("replay finished without dying\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
