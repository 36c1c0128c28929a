"""The worker's event loop on RabbitMQ: an ack scheduled just before the loop blocks goes out before it blocks.

kombu's hub (``kombu.asynchronous.Hub.create_loop``) runs the callbacks scheduled
with ``call_soon`` at the top of each iteration, then polls the sockets for up to
10 s (``fire_timers``' ``max_delay``, or less when a timer is due sooner). A callback
scheduled *by* one of those top-of-loop callbacks, from the loop's own thread, does
not wake the poll: it waits for the next socket event or timer.

Celery acks and rejects through ``call_soon``. On an amqp broker the first callback
of every loop (at boot and after each reconnection) is Celery's ``_quick_drain``
(celery/worker/loops.py), which reads what ``consume()`` prefetched. With the solo pool
the task runs inside that read, so its late ack waits in the hub until the poll
returns. With a prefetch of 1 the broker delivers nothing else meanwhile: a worker
started on a backlog runs one task, then idles up to 10 s, and a retry returning from
a delay bucket queue comes back up to 10 s late (measured 10.0-10.2 s on celery 5.7 /
kombu 5.7 and celery 5.3.6 / kombu 5.3.7; celery/celery#7718, celery/kombu#1587).

:class:`RunReadyBeforePoll` adds a tick callback to the hub (tick callbacks run right
before the poll) that runs the callbacks already scheduled, as the top of the next
iteration would have, so the ack is on the wire before the loop blocks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

logger = logging.getLogger("celery_policy.runtime")

# A callback that keeps scheduling itself (kombu's socket reader, while frames are buffered) gets this many
# runs per tick; what is left then runs at the top of the next iteration, as without this step.
MAX_PASSES = 8


def run_ready(hub: Any) -> int:
    """Run the callbacks scheduled on ``hub`` (and those they schedule, up to MAX_PASSES rounds); return how many."""
    ran = 0
    for _ in range(MAX_PASSES):
        ready = hub._pop_ready()
        if not ready:
            break
        for item in ready:
            if item:  # as create_loop does: a cancelled promise is falsy
                item()
                ran += 1
    return ran


def supports(hub: Any) -> bool:
    """True when ``hub`` has the tick set and the ready queue this step uses (kombu 5.3 to 5.7 do)."""
    return isinstance(getattr(hub, "on_tick", None), set) and callable(getattr(hub, "_pop_ready", None))


class RunReadyBeforePoll(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """Consumer step: run the hub's scheduled callbacks (acks) right before it polls."""

    name = "celery-policy run scheduled acks before poll"

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.hub: Any = None

    def start(self, consumer: Any) -> None:
        hub = getattr(consumer, "hub", None)
        if hub is None:  # gevent/eventlet pools: no hub, Celery's own loop acks at once
            return
        if not supports(hub):
            logger.debug("celery-policy: this kombu hub has no on_tick/_pop_ready; acks keep kombu's timing")
            return
        self.hub = hub
        hub.on_tick.add(self.tick)  # a set: a restart of the consumer adds nothing; hub.reset() keeps it

    def stop(self, consumer: Any) -> None:
        if self.hub is not None:
            self.hub.on_tick.discard(self.tick)

    def tick(self) -> None:
        if self.hub is not None:
            run_ready(self.hub)


def configure(app: Any, broker_url: str | None) -> None:
    """On an amqp broker (where Celery starts each loop with a quick drain), add :class:`RunReadyBeforePoll`."""
    from celery_policy.queues import is_amqp_url

    if not is_amqp_url(broker_url):
        return
    from celery_policy import support

    problems = support.kombu_hub_problems()
    if problems:  # at boot, not at the first message: the acks keep kombu's timing (up to 10 s late)
        kombu = support.installed("kombu")
        logger.warning(
            "celery-policy: kombu %s changed the event-loop internals the RabbitMQ ack step relies on (%s;"
            " tested: %s): the step is off, so an ack may wait up to 10 s in the loop (celery/celery#7718)",
            kombu.version,
            ", ".join(problems),
            kombu.tested_lines(),
        )
        return
    app.steps["consumer"].add(RunReadyBeforePoll)
