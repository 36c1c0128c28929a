"""PolicyTask: the task base class a policy needs, for what a ``run`` wrapper cannot see.

The compiled policy itself is :class:`~celery_policy.runtime.task_runtime.TaskRuntime`;
the wrapper around the body is in :mod:`celery_policy.runtime.wrappers`.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded

from celery_policy.runtime.task_runtime import TaskRuntime

__all__ = ["PolicyTask", "PublishError"]


class PublishError(Exception):
    """A task could not be published within ``producer.publish_retry``."""


class PolicyTask(Task):  # type: ignore[misc]  # celery is untyped
    """Base class for tasks run under a policy: ``Celery(..., task_cls=celery_policy.PolicyTask)``.

    The run wrapper (installed by :func:`celery_policy.install`) classifies
    exceptions raised in the body. This class adds what a wrapper cannot see:
    the hard time limit, which Celery reports to ``on_failure`` in the worker's
    main process, and a clear :class:`PublishError` when the broker is gone.
    """

    abstract = True
    _celery_policy: TaskRuntime | None = None

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        runtime = self._celery_policy
        if runtime is not None and isinstance(exc, TimeLimitExceeded):
            # Runs in the parent with an empty request (celery/worker/request.py on_timeout).
            request = _ParentRequest(task_id)
            if _requeued_on_timeout(self):
                # acks_late without acks_on_timeout: Request.on_timeout requeues the message right after this and
                # it runs again, so this is no final failure (no fail/dead_letter decision, hook or record).
                runtime.time_limit_requeued(request, exc, args or (), kwargs or {})
            else:
                runtime.time_limit_failed(self, request, exc, args or (), kwargs or {})
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        try:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        except _PUBLISH_ERRORS as exc:
            broker = _safe_broker(self.app)
            msg = f"could not publish task '{self.name}' to {broker}: {exc} (producer.publish_retry gave up)"
            raise PublishError(msg) from exc


def _requeued_on_timeout(task: Task) -> bool:
    acks_on_timeout = getattr(task, "acks_on_timeout", None)  # Celery 5.7; before: acks_on_failure_or_timeout
    if acks_on_timeout is None:
        acks_on_timeout = task.acks_on_failure_or_timeout
    return bool(task.acks_late) and acks_on_timeout is False


class _ParentRequest:
    """What the worker's main process knows about a task after a hard time limit.

    Celery calls ``on_failure`` from ``Request.on_timeout`` without pushing a
    request (celery/worker/request.py), so ``task.request`` is empty there. The
    calling ``Request`` still holds the message's context: retries, our header
    (first failure, counters), the queue it came from and the worker's name.
    """

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.retries = 0
        self.headers: dict[str, Any] = {}
        self.delivery_info: dict[str, Any] = {}
        self.hostname: str | None = None
        for name in _CANVAS:
            setattr(self, name, None)
        context = _calling_request_context(task_id)
        if context is not None:
            self.retries = int(getattr(context, "retries", 0) or 0)
            self.headers = dict(getattr(context, "headers", None) or {})
            self.delivery_info = dict(getattr(context, "delivery_info", None) or {})
            self.hostname = getattr(context, "hostname", None)
            for name in _CANVAS:  # the dead letter keeps the task's place in its canvas (deadletter/canvas.py)
                setattr(self, name, getattr(context, name, None))


# What a dead letter copies of a task's canvas from its request (deadletter/canvas.py capture_request).
_CANVAS = (
    "root_id", "parent_id", "group", "group_index", "chain", "callbacks", "errbacks", "chord", "timelimit", "shadow",
)  # fmt: skip


def _calling_request_context(task_id: str, depth: int = 8) -> Any:
    """The ``Context`` of the worker ``Request`` for ``task_id`` found up the call stack, else None."""
    from celery.worker.request import Request

    frame: FrameType | None = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        caller = frame.f_locals.get("self")
        if isinstance(caller, Request) and caller.id == task_id:
            return caller._context
        frame = frame.f_back
    return None


def _safe_broker(app: Any) -> str:
    try:
        return str(app.connection_for_write().as_uri())
    except Exception:  # only used for a message
        return "the broker"


def _publish_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError

    errors: list[type[BaseException]] = [OperationalError, ConnectionError]
    try:
        import redis.exceptions

        errors.append(redis.exceptions.ConnectionError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(errors)


_PUBLISH_ERRORS = _publish_errors()
