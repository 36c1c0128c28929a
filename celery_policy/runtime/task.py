"""PolicyTask: the task base class a policy needs, for what a ``run`` wrapper cannot see.

The compiled policy itself is :class:`~celery_policy.runtime.task_runtime.TaskRuntime`;
the wrapper around the body is in :mod:`celery_policy.runtime.wrappers`.
"""

from __future__ import annotations

import inspect
import sys
from types import FrameType
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded

from celery_policy.runtime.task_runtime import TaskRuntime

__all__ = ["PolicyTask", "PublishError", "compose", "handle_time_limit"]


class PublishError(Exception):
    """A task could not be published within ``producer.publish_retry``."""


class PolicyTask(Task):  # type: ignore[misc]  # celery is untyped
    """Base class for tasks run under a policy: ``Celery(..., task_cls=celery_policy.PolicyTask)``.

    Optional: :func:`celery_policy.install` composes what a policy needs with
    whatever base class a task has (``task_cls``, ``base=``), see
    :func:`compose`. The run wrapper classifies exceptions raised in the body;
    the composed ``on_failure`` handles the hard time limit, which Celery
    reports in the worker's main process, before the task's own ``on_failure``
    runs (so an override that never calls ``super()`` does not switch it off);
    the composed ``apply_async`` raises a clear :class:`PublishError` when the
    broker is gone.
    """

    abstract = True
    _celery_policy: TaskRuntime | None = None


_COMPOSED = "__celery_policy_composed__"


def compose(task_cls: type[Task]) -> dict[str, Any]:
    """Class attributes that add the policy's ``on_failure`` and ``apply_async`` to ``task_cls``'s own.

    Each wraps the method the class has now (its own override or the one it
    inherits), so the task's code still runs, after the policy's handling.
    Applying it twice wraps once.
    """
    composers = {"on_failure": _composed_on_failure, "apply_async": _composed_apply_async, "retry": _composed_retry}
    return {
        name: compose_one(_original(task_cls, name))
        for name, compose_one in composers.items()
        # a staticmethod/classmethod does not take the task as self: left alone (reported at boot and by check)
        if not isinstance(inspect.getattr_static(task_cls, name, None), (staticmethod, classmethod))
    }


def _original(task_cls: type[Task], name: str) -> Any:
    method = getattr(task_cls, name)
    while getattr(method, _COMPOSED, False):
        method = method.__wrapped__
    return method


def _composed_on_failure(original: Any) -> Any:
    def on_failure(self: Task, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> Any:
        handle_time_limit(self, exc, task_id, args, kwargs)
        return original(self, exc, task_id, args, kwargs, einfo)

    return _mark(on_failure, original)


def _composed_apply_async(original: Any) -> Any:
    def apply_async(
        self: Task, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> Any:
        try:
            return original(self, args=args, kwargs=kwargs, task_id=task_id, **options)
        except _PUBLISH_ERRORS as exc:
            broker = _safe_broker(self.app)
            msg = f"could not publish task '{self.name}' to {broker}: {exc} (producer.publish_retry gave up)"
            raise PublishError(msg) from exc

    return _mark(apply_async, original)


def _composed_retry(original: Any) -> Any:
    def retry(
        self: Task,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        runtime = getattr(self, "_celery_policy", None)
        if runtime is not None and runtime.self_retry and countdown is None and eta is None:
            # retry.self_retry: policy -- the task's own call waits the policy's backoff (and its cap)
            countdown, cap = runtime.own_retry(self.request, exc)
            if max_retries is None and cap is not None:
                max_retries = cap
        # by keyword: an override of retry() in the app's base class may order its parameters differently
        return original(
            self,
            args=args,
            kwargs=kwargs,
            exc=exc,
            throw=throw,
            eta=eta,
            countdown=countdown,
            max_retries=max_retries,
            **options,
        )

    return _mark(retry, original)


def _mark(wrapper: Any, original: Any) -> Any:
    setattr(wrapper, _COMPOSED, True)
    wrapper.__wrapped__ = original
    wrapper.__doc__ = getattr(original, "__doc__", None)
    wrapper.__qualname__ = getattr(original, "__qualname__", wrapper.__qualname__)
    return wrapper


def handle_time_limit(task: Task, exc: BaseException, task_id: str, args: Any, kwargs: Any) -> None:
    """The policy's part of ``on_failure``: a hard time limit is a final failure (or a requeue)."""
    runtime = getattr(task, "_celery_policy", None)
    if runtime is None or not isinstance(exc, TimeLimitExceeded):
        return
    # Runs in the parent with an empty request (celery/worker/request.py on_timeout).
    request = _ParentRequest(task_id)
    if _requeued_on_timeout(task):
        # acks_late without acks_on_timeout: Request.on_timeout requeues the message right after this and
        # it runs again, so this is no final failure (no fail/dead_letter decision, hook or record).
        runtime.time_limit_requeued(request, exc, args or (), kwargs or {})
    else:
        runtime.time_limit_failed(task, request, exc, args or (), kwargs or {})


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
