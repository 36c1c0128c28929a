"""The hot path: the ``run`` wrapper a policy puts around a task's body.

Three variants are written out on purpose: each call pays only for what its
policy needs (no flag tests on the hot path), and failures are re-raised from
the wrapper's own frame to keep the tracebacks Celery renders short.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Retry, TaskPredicate

from celery_policy.runtime.soft_limit import timed
from celery_policy.runtime.task_runtime import RERAISE, TaskRuntime

_WRAPPED = "__celery_policy_runtime__"

__all__ = ["wrap_run"]


def wrap_run(task: Task, runtime: TaskRuntime) -> None:
    """Install the policy wrapper as the instance's ``run`` (as Celery's autoretry does).

    A decorator's ``autoretry_for`` wrapper is removed: where the policy governs
    retries it wins, and two retry loops around one body would multiply attempts.
    A task whose policy sets ``timeout.soft`` also gets the soft-limit backstop
    (runtime/soft_limit.py) around its body, inside the failure handling, so a
    soft limit it raises goes through the policy like Celery's own.
    """
    if not runtime.needs_wrapper:
        _wrap_backstop_only(task, runtime)
        return
    inner = _unwrapped_run(task)
    if inner is None:
        return
    if runtime.flow is not None:  # breaker / limit: the gate runs inside the retry handling, around the body
        body = inner
        inner = runtime.flow.wrap(task, body)
        setattr(inner, _WRAPPED, runtime)
        inner.__wrapped__ = body  # type: ignore[attr-defined]
    if runtime.soft_limit_s is not None:  # around the gate too: Celery's soft limit counts its wait
        body = inner
        inner = timed(task, body)
        setattr(inner, _WRAPPED, runtime)
        inner.__wrapped__ = body  # type: ignore[attr-defined]
        inner.__name__ = getattr(body, "__name__", "run")
        inner.__doc__ = getattr(body, "__doc__", None)
    handle = runtime.handle_failure

    if runtime.max_redeliveries is None and runtime.policy.idempotency is None:

        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return inner(*args, **kwargs)
            except TaskPredicate:  # Retry, Ignore, Reject: Celery's control flow passes through untouched
                raise
            except Exception as exc:
                outcome = handle(task, exc, args, kwargs)
                if outcome is RERAISE:
                    raise
                if isinstance(outcome, Retry):
                    raise outcome from None
                return outcome

    elif runtime.policy.idempotency is None:
        check = runtime.check_redelivery

        def run(*args: Any, **kwargs: Any) -> Any:
            # Poison-pill cap without idempotency: only a redelivered message pays more than a dict read.
            delivery = task.request.delivery_info
            if delivery and delivery.get("redelivered"):
                check(task, args, kwargs)
            try:
                return inner(*args, **kwargs)
            except TaskPredicate:
                raise
            except Exception as exc:
                outcome = handle(task, exc, args, kwargs)
                if outcome is RERAISE:
                    raise
                if isinstance(outcome, Retry):
                    raise outcome from None
                return outcome

    else:
        enter = runtime.enter
        succeeded = runtime.succeeded

        def run(*args: Any, **kwargs: Any) -> Any:
            entry = enter(task, args, kwargs)
            if entry is not None and entry.duplicate:
                return entry.result
            try:
                result = inner(*args, **kwargs)
            except TaskPredicate:
                runtime.release(entry)
                raise
            except Exception as exc:
                runtime.release(entry)
                outcome = handle(task, exc, args, kwargs)
                if outcome is RERAISE:
                    raise
                if isinstance(outcome, Retry):
                    raise outcome from None
                return outcome
            succeeded(entry, result)
            return result

    setattr(run, _WRAPPED, runtime)
    run.__wrapped__ = inner  # type: ignore[attr-defined]
    run.__name__ = getattr(inner, "__name__", "run")
    run.__doc__ = getattr(inner, "__doc__", None)
    task.run = run
    task.__dict__.pop("_orig_run", None)


def _wrap_backstop_only(task: Task, runtime: TaskRuntime) -> None:
    """A policy that sets ``timeout.soft`` and decides nothing on failure: only the backstop, around ``run`` as it is.

    A decorator's autoretry wrapper stays (the policy governs no retries): when it
    wraps the task after this, the backstop is inside it, around the body.
    """
    current: Callable[..., Any] = task.__dict__.get("run") or task.run
    if getattr(current, _WRAPPED, None) is runtime:  # ours, or autoretry's copy of our marker
        return
    run = timed(task, current)
    setattr(run, _WRAPPED, runtime)
    run.__wrapped__ = current  # type: ignore[attr-defined]
    run.__name__ = getattr(current, "__name__", "run")
    run.__doc__ = getattr(current, "__doc__", None)
    task.run = run


def _unwrapped_run(task: Task) -> Callable[..., Any] | None:
    """The task body without our wrapper or Celery's autoretry wrapper around it."""
    run = task.__dict__.get("run")
    if run is None:
        body: Callable[..., Any] = task.run
        return body
    original = task.__dict__.get("_orig_run")
    if original is not None:  # celery.app.autoretry wrapped the body (or our wrapper)
        run = original
    # autoretry's functools.wraps copies our marker and sets __wrapped__, so peel every marked layer
    while hasattr(run, _WRAPPED):
        run = run.__wrapped__
    return run  # type: ignore[no-any-return]
