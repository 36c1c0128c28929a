"""Writing a task's dead letters, and counting broker redeliveries for the poison-pill cap.

Both live in the dead-letter store's Redis (or, for dead letters, the AMQP
store); neither decides anything: :class:`~celery_policy.runtime.task_runtime.TaskRuntime`
decides, these record.
"""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from celery import Task, signals
from celery.exceptions import Ignore, Reject

from celery_policy.deadletter.canvas import capture_request, redact_fields
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import DeadLetterStore, StoreUnavailableError
from celery_policy.runtime.decision import Decision
from celery_policy.runtime.events import ArgRenderer, logger, scrub
from celery_policy.runtime.headers import headers_to_copy, policy_state

# Delay before a message whose dead letter could not be written runs again: the first, doubling up to the
# last while the store stays down. Without it a requeued message comes straight back and re-runs in a hot loop.
STORE_DOWN_PAUSE_S = (0.5, 10.0)
# Redelivery counters outlive any visibility timeout or retry countdown a policy sets.
COUNTER_TTL_S = 7 * 86400

__all__ = ["COUNTER_TTL_S", "STORE_DOWN_PAUSE_S", "DeadLetterWriter", "RedeliveryCounter", "store_rejected_failure"]


class DeadLetterWriter:
    """Writes one task's dead letters to ``store`` (None: dead letters are off and nothing is written)."""

    def __init__(self, name: str, args: ArgRenderer) -> None:
        self.name = name
        self.args = args
        self.store: DeadLetterStore | None = None  # set by TaskRuntime.bind_redis()
        self._failures = 0  # consecutive failed writes in this process (paces requeues)

    def write(
        self,
        request: Any,
        exc: BaseException,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        rendered: Mapping[str, Any],
        attempt: int,
        reason: str,
        decision: Decision,
        *,
        republish_with: Task | None = None,
    ) -> None:
        """One record in the store before the message is acked; if the store is down the message runs
        again later (a dead letter is never silently dropped) after a delay of ``STORE_DOWN_PAUSE_S``,
        doubling per consecutive failure in this process:

        - an unacked message (``ack.late``): pause, then ``Reject(requeue=True)``;
        - a message already acked (early ack, or a hard time limit in the worker's main process, where
          Celery acks before ``on_failure``): ``republish_with`` publishes it again (same id, retry number
          and headers) with that countdown, then ``Ignore`` is raised; if even that fails,
          ``dead_letter_lost`` is logged and this returns.
        """
        secrets = self.args.secrets(args, kwargs)
        if self.store is None:
            return
        now = time.time()
        state = policy_state(request)
        shown = self.args.mode == "show"
        replayable = shown or (
            list(rendered.get("args", [])) == list(args) and dict(rendered.get("kwargs", {})) == dict(kwargs)
        )
        delivery = getattr(request, "delivery_info", None) or {}
        canvas, canvas_intact = redact_fields(capture_request(request), self.args.mode, self.args.keys)
        record = DeadLetter(
            task=self.name,
            task_id=getattr(request, "id", None),
            args=list(args) if shown else list(rendered.get("args", [])),
            kwargs=dict(kwargs) if shown else dict(rendered.get("kwargs", {})),
            replayable=replayable and canvas_intact,
            reason=reason,
            exc_type=decision.exc_type,
            exc_message=scrub(str(exc), secrets)[:2000],
            traceback=scrub("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), secrets)[-8000:],
            attempts=attempt,
            first_failure=float(state.get("t0") or now),
            last_failure=now,
            hostname=getattr(request, "hostname", None) or socket.gethostname(),
            queue=delivery.get("routing_key"),
            policy_source=decision.policy_source,
            **canvas,
        )
        try:
            self.store.add(record)
        except StoreUnavailableError as store_exc:
            self._failures += 1
            first_s, max_s = STORE_DOWN_PAUSE_S
            delay_s = min(max_s, first_s * 2 ** (self._failures - 1))
            logger.error(
                "dead_letter_store_unavailable",
                task=self.name,
                task_id=record.task_id,
                reason=reason,
                again_in_s=delay_s,
                error=str(store_exc),
            )
            if republish_with is None:
                time.sleep(delay_s)
                raise Reject(f"dead-letter store unavailable: {store_exc}", requeue=True) from store_exc
            if _publish_again(republish_with, request, args, kwargs, delay_s):
                raise Ignore() from store_exc
            return
        self._failures = 0


class RedeliveryCounter:
    """Broker redeliveries of one message, keyed on (task id, retry number).

    Keying on the retry number separates retries (a new message with the same
    id) from redeliveries of the same message by the broker.
    """

    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self.client = client

    def count(self, request: Any) -> int | None:
        """Count this delivery and return the total so far; None when Redis cannot be reached."""
        key = f"celery-policy:dlv:{{{request.id}}}:{request.retries or 0}"
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, COUNTER_TTL_S)
        try:
            return int(pipe.execute()[0])
        except redis.RedisError as counter_exc:
            # The counter lives in the dead-letter store. Raising here would fail (and ack) the message, so a
            # store outage would drop it: run it uncounted instead, the cap applies again once the store is back.
            logger.error("redelivery_counter_unavailable", task=self.name, task_id=request.id, error=str(counter_exc))
            return None


def store_rejected_failure(
    task: Task, request: Any, rejected: Reject, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    """What Celery 5.7's worker does for ``Reject(requeue=False)`` and older releases do not (celery#4222).

    Store FAILURE (which also fails the chord the task belongs to and calls its errbacks) and send
    ``task_failure``. Without it the task stays PENDING/STARTED and a chord waiting on it never finishes.
    """
    store_result = not task.ignore_result or task.store_errors_even_if_ignored
    try:
        task.backend.mark_as_failure(request.id, rejected, request=request, store_result=store_result)
    except Exception as exc:  # the result backend is down: the message is dropped as Celery would, the record stays
        logger.error("rejected_failure_not_stored", task=task.name, task_id=request.id, error=str(exc))
    signals.task_failure.send(
        sender=task, task_id=request.id, exception=rejected, args=args, kwargs=kwargs, traceback=None, einfo=None
    )


def _publish_again(
    task: Task, request: Any, args: Sequence[Any], kwargs: Mapping[str, Any], countdown_s: float
) -> bool:
    """Publish an already acked message again (same task id, retry number, headers and queue) after
    ``countdown_s``; False, with ``dead_letter_lost`` logged, when even that fails."""
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    options: dict[str, Any] = {"queue": queue} if queue else {}
    try:
        task.apply_async(
            list(args),
            dict(kwargs),
            task_id=request.id,
            retries=int(request.retries or 0),
            headers=headers_to_copy(request),
            countdown=countdown_s,
            **options,
        )
    except Exception as exc:  # the broker is down too: nothing is left to keep the message
        logger.error("dead_letter_lost", task=task.name, task_id=request.id, error=f"{type(exc).__name__}: {exc}")
        return False
    return True
