"""CP311: what the policy cannot compose with a task's own Task class (``--app``)."""

from __future__ import annotations

from collections.abc import Iterator

from celery_policy.errors import Diagnostic
from celery_policy.lint.context import LintContext
from celery_policy.lint.registry import rule
from celery_policy.taskoptions import needs_method


@rule("CP311", "not-composed", severity="warning", needs_app=True)
def not_composed(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports tasks whose own class keeps the policy from wrapping a method it needs.

    The methods are `on_failure` (needed for a hard time limit), `retry`
    (for `retry.self_retry: policy`) and `apply_async` (for
    `producer.publish_retry`).

    `install()` composes the policy with any Task base class by wrapping these
    methods on the task's class, so `PolicyTask` is not needed and an
    `on_failure` that never calls `super()` is fine. It cannot wrap a method
    set on the task instance (which hides the class's) or one made a
    `staticmethod`/`classmethod`. The worker logs the same at boot
    (`policy_not_composed`).

    Why: without the wrapped `on_failure` a hard time limit is not
    dead-lettered; without `retry`, `retry.self_retry: policy` does nothing.

    Example:
        bad:  class MyTask(Task): on_failure = staticmethod(log_failure)
        good: class MyTask(Task): def on_failure(self, exc, task_id, args, kwargs, einfo): log_failure(...)
    """
    app = ctx.app
    if app is None:
        return
    publish_retry = "producer" in ctx.document.model_fields_set
    for task, view in ctx.task_views():
        policy = view.policy
        for method, problem in app.not_composed.get(task, ()):
            needed = needs_method(
                method,
                hard_limit=policy.timeout.hard is not None,
                self_retry=policy.retry.self_retry == "policy",
                publish_retry=publish_retry,
            )
            if not needed:
                continue
            path = view.top.prefix
            yield ctx.diagnostic(
                "CP311",
                f"task '{task}': {problem}",
                path,
                "define it as a plain method on the task class (the policy wraps it and calls it after its own)",
            )
