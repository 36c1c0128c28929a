"""The Celery and kombu releases celery-policy runs on, and the internals it relies on there.

celery-policy reaches into a few private parts of Celery (the worker
``Request`` context, the app's task registry, the per-class exec-options
cache) and, for reliable fetch, of kombu's Redis transport (the poller's
take entry points, the unacked bookkeeping). Those are checked here, at boot,
against the installed packages, so a release that moved one of them stops the
worker at ``install()`` with a message naming the release and the fix, never
at the first message.

Each line below was run by the test matrix (``nox -s matrix``, see the
README's support table); the newest release of each line is the one named.
A release outside these lines is not refused by itself: the internals are
probed, and only reliable fetch (the deepest reach) is switched off, with a
warning, unless the policy asked for it explicitly.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The release lines the suite runs on; (major, minor) -> the release of that line that was tested.
CELERY_LINES: dict[tuple[int, int], str] = {
    (5, 3): "5.3.6",
    (5, 4): "5.4.0",
    (5, 5): "5.5.3",
    (5, 6): "5.6.3",
    (5, 7): "5.7.0",
}
KOMBU_LINES: dict[tuple[int, int], str] = {
    (5, 3): "5.3.7",
    (5, 4): "5.4.2",
    (5, 5): "5.5.4",
    (5, 6): "5.6.2",
    (5, 7): "5.7.0",
}

# Celery marks a task FAILURE itself when it raises Reject(requeue=False) from 5.7 on (celery#4222);
# before that the task stays PENDING/STARTED and a chord waiting on it never finishes.
CELERY_STORES_REJECTED_FAILURE = (5, 7)
# From 5.7 on, a hard time limit calls task.on_failure and requeues a late-ack message whose ack flag is off
# (see celery_policy.runtime.request).
CELERY_HANDLES_HARD_TIMEOUTS = (5, 7)
# From 5.5 on, workers detect quorum queues and drop the global QoS that quorum queues refuse (celery#6067).
CELERY_CONSUMES_QUORUM_QUEUES = (5, 5)


@dataclass(frozen=True)
class Release:
    """An installed distribution's version, parsed far enough to pick its release line."""

    name: str
    version: str

    @property
    def line(self) -> tuple[int, int]:
        parts = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in self.version.split(".")[:2]]
        return (parts[0], parts[1] if len(parts) > 1 else 0)

    def tested_lines(self) -> str:
        lines = CELERY_LINES if self.name == "celery" else KOMBU_LINES
        return ", ".join(lines.values())

    @property
    def is_tested_line(self) -> bool:
        lines = CELERY_LINES if self.name == "celery" else KOMBU_LINES
        return self.line in lines


def installed(name: str) -> Release:
    """The installed release of ``name`` (``celery`` or ``kombu``)."""
    return Release(name, importlib.metadata.version(name))


def _names(function: Any) -> set[str]:
    """Attribute and global names a function's code refers to (``self.x`` reads and writes included)."""
    code = getattr(function, "__code__", None)
    return set(code.co_names) if code is not None else set()


def _params(function: Any) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    return tuple(code.co_varnames[: code.co_argcount]) if code is not None else ()


def _missing(owner: Any, label: str, attributes: Iterable[str]) -> list[str]:
    return [f"{label}.{name}" for name in attributes if not hasattr(owner, name)]


def celery_problems() -> list[str]:
    """The Celery internals the runtime relies on that the installed Celery lacks (empty when all are there)."""
    from celery import Celery, Task
    from celery.worker.request import Request

    # runtime.task finds the worker Request's context up the stack when Celery calls on_failure without one
    request_attributes = ("id", "task", "on_failure", "on_timeout", "reject", "_context")
    problems = _missing(Request, "celery.worker.request.Request", request_attributes)
    # install() walks the registry before finalize and resets the exec-options cache after setting class options
    if "_tasks" not in _names(Celery.__init__):
        problems.append("celery.Celery._tasks")
    if not hasattr(Task, "_exec_options"):
        problems.append("celery.Task._exec_options")
    if not hasattr(Task, "Request"):  # runtime.request: the documented custom Request class hook
        problems.append("celery.Task.Request")
    # runtime.flow publishes a snoozed task as Task.retry publishes a retry (same id, canvas, headers, queue)
    if not hasattr(Task, "signature_from_request"):
        problems.append("celery.Task.signature_from_request")
    # delayed delivery acks the retried message by its delivery tag, read from task.request.properties
    if "properties" not in _names(Request.__init__) and "properties" not in Request.__init__.__code__.co_consts:
        problems.append("celery.worker.request.Request passes the message properties to the task request")
    return problems


def celery_stores_rejected_failure() -> bool:
    """True when the worker itself stores FAILURE for a task that raised ``Reject(requeue=False)``."""
    return installed("celery").line >= CELERY_STORES_REJECTED_FAILURE


def celery_handles_hard_timeouts() -> bool:
    """True when the worker's ``Request.on_timeout`` calls ``task.on_failure`` and requeues as the policy expects."""
    return installed("celery").line >= CELERY_HANDLES_HARD_TIMEOUTS


def celery_consumes_quorum_queues() -> bool:
    """True when a worker can consume from a RabbitMQ quorum queue (no global QoS)."""
    return installed("celery").line >= CELERY_CONSUMES_QUORUM_QUEUES


def kombu_redis_problems() -> list[str]:
    """The kombu Redis transport internals reliable fetch relies on that the installed kombu lacks or changed.

    Reliable fetch replaces the take, not the poller: kombu's poller must still call
    ``Channel._brpop_start()`` to send a take and ``Channel._brpop_read()`` when its reply is
    readable, and the unacked bookkeeping must keep its names.
    """
    from kombu.transport import redis as kombu_redis
    from kombu.transport import virtual

    channel, qos, poller = kombu_redis.Channel, kombu_redis.QoS, kombu_redis.MultiChannelPoller
    problems = _missing(
        channel,
        "kombu.transport.redis.Channel",
        (
            "_brpop_start", "_brpop_read", "_q_for_pri", "_connparams", "_disconnect_pools", "conn_or_acquire",
            "basic_consume", "basic_get", "priority_steps", "sep", "unacked_key", "unacked_index_key",
            "from_transport_options", "global_keyprefix", "visibility_timeout",
            "_put", "_get_message_priority",  # delayed delivery: the publish of one message to its priority list
        ),
    )  # fmt: skip
    # leases: the sweep renews what this process holds first; the heartbeat thread reads the delivered tags
    qos_names = ("append", "_remove_from_indices", "pipe_or_acquire", "restore_visible")
    problems += _missing(qos, "kombu.transport.redis.QoS", qos_names)
    if "_delivered" not in _names(virtual.QoS.__init__):
        problems.append("kombu.transport.virtual.QoS._delivered")
    problems += _missing(poller, "kombu.transport.redis.MultiChannelPoller", ("get", "_register_BRPOP"))
    if hasattr(poller, "_register_BRPOP") and "_brpop_start" not in _names(poller._register_BRPOP):
        problems.append("MultiChannelPoller._register_BRPOP no longer calls Channel._brpop_start")
    set_up = _names(channel.__init__)  # instance attributes the take reads, and the BRPOP handler registration
    for name in ("_brpop_read", "_queue_cycle", "connection_errors"):
        if name not in set_up:
            problems.append(f"kombu.transport.redis.Channel.{name}")
    expected = {
        (channel, "_connparams"): ("self", "asynchronous"),
        (channel, "_q_for_pri"): ("self", "queue", "pri"),
        (qos, "_remove_from_indices"): ("self", "delivery_tag", "pipe"),
        (qos, "append"): ("self", "message", "delivery_tag"),
        (poller, "get"): ("self", "callback", "timeout"),
        (virtual.Transport, "_deliver"): ("self", "message", "queue"),
        (channel, "_put"): ("self", "queue", "message"),
    }
    for (owner, name), params in expected.items():
        found = _params(getattr(owner, name, None))
        if found and found != params:
            problems.append(f"{owner.__name__}.{name}{found} (expected {params})")
    return problems


def kombu_hub_problems() -> list[str]:
    """The kombu event-loop internals runtime/eventloop.py relies on that the installed kombu lacks.

    The RabbitMQ consumer step runs the hub's scheduled callbacks from a tick callback: it needs the
    ``on_tick`` set and the ``_pop_ready`` method (kombu 5.3.7 to 5.7.0, :data:`KOMBU_LINES`).
    """
    from kombu.asynchronous import Hub

    problems = _missing(Hub, "kombu.asynchronous.Hub", ("_pop_ready", "create_loop"))
    if "on_tick" not in _names(Hub.__init__):
        problems.append("kombu.asynchronous.Hub.on_tick")
    return problems


def reliable_fetch_problem() -> str | None:
    """Why reliable fetch cannot run on the installed kombu, or None when it can.

    Outside the tested kombu lines the answer is "not tested" even when every probe passes:
    the take path depends on the poller's behaviour, not only on names.
    """
    kombu = installed("kombu")
    problems = kombu_redis_problems()
    if problems:
        return f"kombu {kombu.version} changed the Redis transport internals it relies on: {', '.join(problems)}"
    if not kombu.is_tested_line:
        return f"kombu {kombu.version} is not a tested release line (tested: {kombu.tested_lines()})"
    return None


def pipeline_replay_problem() -> str | None:
    """Why ``dlq replay`` cannot push pre-serialized messages into a Redis broker, or None when it can.

    The pipelined publisher (deadletter/fastpath.py) writes the envelope kombu's Redis transport
    writes and pushes it to the key the transport reads: it needs ``prepare_message``, ``encode_body``,
    ``body_encoding``, ``_q_for_pri(queue, pri)`` and ``client`` of the Redis channel. Without them
    replay publishes through ``send_task``.
    """
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    problems = _missing(
        channel,
        "kombu.transport.redis.Channel",
        ("prepare_message", "encode_body", "body_encoding", "_q_for_pri", "client"),
    )
    found = _params(getattr(channel, "_q_for_pri", None))
    if found and found != ("self", "queue", "pri"):
        problems.append(f"Channel._q_for_pri{found} (expected ('self', 'queue', 'pri'))")
    if problems:
        return f"kombu {installed('kombu').version} changed the Redis transport: {', '.join(problems)}"
    return None
