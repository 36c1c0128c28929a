# kombu's Connection and Queue are unannotated:
# mypy: disable-error-code="no-untyped-call"
"""A kombu consumer that SIGKILLs itself inside the fetch window: after the take, before QoS.append returns.

    python window_consumer.py BROKER_URL TRANSPORT QUEUE

TRANSPORT is ``redis`` (plain kombu) or ``celery_policy.transport.redis:Transport``.
The kill is injected (os.kill in the process itself), not simulated: whatever
Redis holds afterwards is what a crash at that instant leaves behind.
"""

from __future__ import annotations

import os
import signal
import sys

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.transport import redis as kombu_redis

from celery_policy.transport import redis as reliable


def _die(*_args: object, **_kwargs: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    url, transport, queue_name = sys.argv[1:4]
    # The window: kombu's QoS.append is where plain kombu records the message; the reliable
    # transport's append runs at the same point, after its take script already recorded it.
    kombu_redis.QoS.append = _die  # type: ignore[method-assign]  # the fault injection itself
    reliable.QoS.append = _die  # type: ignore[method-assign]
    options = {"reliable_heartbeat_interval": 0.2, "reliable_heartbeat_ttl": 1.0, "reliable_recover_interval": 0.2}
    with Connection(url, transport=transport, transport_options=options) as conn:
        queue = Queue(queue_name)
        with conn.Consumer(queue, callbacks=[lambda body, message: None], accept=["json"]):
            print("consuming", flush=True)
            while True:
                conn.drain_events(timeout=5)


if __name__ == "__main__":
    main()
