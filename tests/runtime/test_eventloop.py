# kombu's Hub is unannotated:
# mypy: disable-error-code="no-untyped-call"
"""The worker step that runs the hub's scheduled callbacks before it polls (celery_policy/runtime/eventloop.py).

A real kombu hub with a real socket registered (never readable, so its poll blocks
for the full timeout): one iteration of its loop either ran the callback that a
top-of-loop callback scheduled, or left it for after the poll. The timing in a
real worker is in tests/amqp/test_amqp_delay.py (solo pool on RabbitMQ).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery import Celery
from kombu.asynchronous import Hub

from celery_policy.runtime.eventloop import MAX_PASSES, RunReadyBeforePoll, configure, run_ready


@pytest.fixture
def hub() -> Iterator[Hub]:
    found = Hub()
    reader, writer = socket.socketpair()
    found.add_reader(reader, lambda: None)  # nothing is ever written: the poll waits its whole timeout
    yield found
    found.close()
    reader.close()
    writer.close()


def _schedule_ack_from_a_top_of_loop_callback(hub: Hub, ran: list[str]) -> None:
    # Celery's quick drain is such a callback; the task the solo pool runs inside it schedules its ack
    hub.call_soon(lambda: hub.call_soon(lambda: ran.append("ack")))


def test_an_ack_scheduled_by_a_top_of_loop_callback_runs_before_the_poll(hub: Hub) -> None:
    step = RunReadyBeforePoll(SimpleNamespace(hub=hub))
    step.start(SimpleNamespace(hub=hub))
    ran: list[str] = []
    _schedule_ack_from_a_top_of_loop_callback(hub, ran)
    next(hub.create_loop())  # one iteration: the scheduled callbacks, the tick callbacks, one poll
    assert ran == ["ack"]
    step.stop(SimpleNamespace(hub=hub))
    assert step.tick not in hub.on_tick


def test_without_the_step_the_ack_waits_for_the_poll(hub: Hub) -> None:
    """kombu's own behaviour, which the step exists for; if kombu changes it, the step may go."""
    ran: list[str] = []
    _schedule_ack_from_a_top_of_loop_callback(hub, ran)
    loop = hub.create_loop()
    next(loop)
    assert ran == []
    next(loop)
    assert ran == ["ack"]


def test_a_callback_that_keeps_rescheduling_itself_runs_a_bounded_number_of_times(hub: Hub) -> None:
    runs: list[int] = []

    def again() -> None:  # kombu's socket reader does this while it finds frames
        runs.append(1)
        hub.call_soon(again)

    hub.call_soon(again)
    assert run_ready(hub) == MAX_PASSES
    assert len(hub._ready) == 1  # left for the loop's next iteration, as without the step


def test_the_step_is_added_on_amqp_brokers_only() -> None:
    for url, added in (("amqp://guest@localhost//", True), ("redis://localhost/0", False), (None, False)):
        app = Celery("loop", broker=url or "memory://", set_as_current=False)
        configure(app, url)
        assert (RunReadyBeforePoll in app.steps["consumer"]) is added, url
