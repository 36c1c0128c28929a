"""The ``task_routes`` router built from ``route`` fields."""

from __future__ import annotations

from typing import Any

from celery_policy.resolve import Policy


class PolicyRouter:
    """A Celery router callable: ``router(name, args, kwargs, options, task=None)``.

    Routes are resolved per task name once and cached. Returns None for tasks
    without a ``route`` so later entries of ``task_routes`` still apply.
    ``apply_async(queue=...)`` and retries still win, as in plain Celery.
    """

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._cache: dict[str, dict[str, Any] | None] = {}

    def __call__(self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        try:
            return self._cache[name]
        except KeyError:
            route = self._cache[name] = self.route_for(name)
            return route

    def route_for(self, name: str) -> dict[str, Any] | None:
        route = self._policy.for_task(name).policy.route
        if route is None:
            return None
        found = {k: v for k, v in route.model_dump().items() if v is not None}
        return found or None
