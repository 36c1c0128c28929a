"""The worker ``Request`` of governed tasks on Celery < 5.7: a hard time limit handled as Celery 5.7 does.

On a hard time limit the worker's main process calls ``Request.on_timeout``.
Celery 5.7 stores FAILURE there, calls ``task.on_failure`` (where the policy
writes the ``time_limit`` dead letter, logs its decision and calls its hooks)
and, with late ack, acks (``acks_on_timeout``) or requeues the message. Here
only the policy's part runs (:func:`celery_policy.runtime.task.handle_time_limit`):
the task's own ``on_failure`` is left as these releases leave it, uncalled.
Celery 5.3-5.6 store FAILURE and ack only when ``acks_on_failure_or_timeout``
is set: ``task.on_failure`` is never called, and a late-ack message with that
flag off is rejected without requeue by the pool's failure callback right
(which may also come first), so it is lost instead of running again
(celery/worker/request.py, ``on_timeout`` and ``on_failure``, 5.3.6 to 5.6.3).

:func:`request_class` gives a task's own Request class (Celery's documented
``Task.Request`` extension point) this 5.7 behaviour. ``install()`` sets it
only where the installed Celery lacks it
(:func:`celery_policy.support.celery_handles_hard_timeouts`).
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.exceptions import TimeLimitExceeded
from celery.utils.imports import symbol_by_name
from celery.worker import state

from celery_policy.runtime.task import handle_time_limit

logger = structlog.get_logger("celery_policy")


class HardTimeoutAsIn57:
    """Mixin for a worker Request class: the policy's time-limit handling and the late-ack requeue."""

    task: Any
    id: str
    args: Any
    kwargs: Any
    reject: Any

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if soft or getattr(state, "should_terminate", None):  # cold shutdown: the message is restored unacked
            super().on_timeout(soft, timeout)  # type: ignore[misc]  # the Request class this is mixed into
            return
        task = self.task
        # Before Celery's own handling, which may ack: the dead letter is written before the message is gone.
        # Only the policy's part of on_failure: these releases never call the task's own on_failure on a hard
        # time limit, and adopting a policy must not start calling the app's code where it was not called.
        try:
            handle_time_limit(task, TimeLimitExceeded(timeout), self.id, self.args, self.kwargs)
        except Exception as exc:  # the policy's handler logs its own failures; never leave the message unhandled
            logger.error("time_limit_handler_failed", task=task.name, task_id=self.id, error=repr(exc))
        super().on_timeout(soft, timeout)  # type: ignore[misc]
        if _requeues(task):
            self.reject(requeue=True)  # a no-op when the pool's failure callback came first (below)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        # The pool reports the killed job here too, before or after on_timeout; Celery < 5.7 rejects the
        # message without requeue then. Requeue it first: Celery's own reject is then a no-op.
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it in ExceptionWithTraceback
        if isinstance(exc, TimeLimitExceeded) and _requeues(self.task):
            self.reject(requeue=True)
            send_failed_event = False  # as Celery 5.7: a requeued message has not failed
        super().on_failure(exc_info, send_failed_event, return_ok)  # type: ignore[misc]


def _requeues(task: Any) -> bool:
    """Late ack with the ack flag off: a hard time limit gives the message back to the queue (Celery 5.7)."""
    return bool(task.acks_late) and not task.acks_on_failure_or_timeout


_CLASSES: dict[type, type] = {}


def request_class(current: Any) -> type:
    """``current`` (a Request class or its ``module:Name``) with :class:`HardTimeoutAsIn57` mixed in, made once."""
    base: type = symbol_by_name(current)
    if issubclass(base, HardTimeoutAsIn57):
        return base
    found = _CLASSES.get(base)
    if found is None:
        found = _CLASSES[base] = type(f"Policy{base.__name__}", (HardTimeoutAsIn57, base), {"__module__": __name__})
    return found
