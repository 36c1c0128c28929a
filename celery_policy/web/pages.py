"""The read-only pages over the policy and the fleet: ``/policies``, ``/policies/<task>``, ``/fleet``.

They show what ``celery-policy explain``, ``diff`` and ``status`` print, from
the same functions: the effective policy with each field's source, the retry
schedule (as a chart), the fields each environment overlay changes, and the
workers grouped by the fingerprint of the policy they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from celery_policy.errors import PolicyError

if TYPE_CHECKING:
    from celery_policy.web.app import Console

Handler = Callable[[Request], Any]
NO_POLICY = "no policy: pass --file or --app"


def task_names(console: Console) -> list[str]:
    """The app's governed tasks when there is an app, else every name and pattern the policy file names."""
    policy = console.config.policy
    app = console.config.app
    if app is not None:
        try:
            app.loader.import_default_modules()
            app.finalize(auto=True)
        except Exception:  # an app that cannot import its tasks here: the policy's names still show
            app = None
    if app is not None:
        named = set(policy.document.tasks) if policy is not None else set()
        return sorted(n for n in list(app.tasks) if not n.startswith("celery.") or n in named)
    if policy is None:
        return []
    from celery_policy.fleet import policy_task_names

    return policy_task_names(policy)


def _schedule_chart(schedule: Any, width: int = 1100, height: int = 170) -> dict[str, Any]:
    """One bar per retry: solid up to the shortest wait, light up to the longest (the jitter's range)."""
    rows = list(schedule.rows)
    if not rows:
        return {"bars": [], "width": width, "height": height}
    top = max(row.delay_max for row in rows) or 1.0
    slot = width / len(rows)
    usable = height - 40
    bars = []
    for i, row in enumerate(rows):
        high = max(usable * row.delay_max / top, 1.5)
        low = usable * row.delay_min / top
        base = height - 18
        bars.append(
            {
                "x": round(i * slot + 3, 1),
                "w": round(min(max(slot - 6, 1), 90), 1),
                "y_max": round(base - high, 1),
                "h_max": round(high, 1),
                "y_min": round(base - low, 1),
                "h_min": round(low, 1),
                "retry": row.retry,
                "label": f"retry {row.retry}: waits {_seconds(row.delay_min)} to {_seconds(row.delay_max)}",
                "past_deadline": row.past_deadline,
            }
        )
    return {"bars": bars, "width": width, "height": height, "top": _seconds(top)}


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.3g}h"
    if value >= 60:
        return f"{value / 60:.3g}m"
    return f"{value:.3g}s"


def _summary(console: Console, name: str) -> dict[str, Any]:
    policy = console.config.policy.for_task(name)
    p = policy.policy
    return {
        "task": name,
        "max_retries": p.retry.max_retries,
        "backoff": f"{_seconds(p.retry.backoff.initial)} ×{p.retry.backoff.factor:g} ≤ {_seconds(p.retry.backoff.max)}",
        "timeout": "/".join(_seconds(v) if v else "–" for v in (p.timeout.soft, p.timeout.hard)),
        "late_ack": p.ack.late,
        "dead_letter": p.dead_letter.enabled,
        "layers": ", ".join(policy.layers) or "builtin",
    }


def policies_handler(console: Console, need: Callable[..., Any]) -> Handler:
    async def handler(request: Request) -> Response:
        who = need(console, request)
        if isinstance(who, Response):
            return who
        if console.config.policy is None:
            return console.render(
                request, "error.html", who, status_code=404, message="no policy: pass --file or --app"
            )
        try:
            rows = [_summary(console, name) for name in task_names(console)]
        except PolicyError as exc:
            return console.render(request, "error.html", who, status_code=500, message=str(exc))
        return console.render(
            request, "policies.html", who, rows=rows, files=console.config.policy.files, env=console.config.policy.env
        )

    return handler


def policy_handler(console: Console, need: Callable[..., Any]) -> Handler:
    async def handler(request: Request) -> Response:
        who = need(console, request)
        if isinstance(who, Response):
            return who
        policy = console.config.policy
        if policy is None:
            return console.render(
                request, "error.html", who, status_code=404, message="no policy: pass --file or --app"
            )
        from celery_policy.explain import explain
        from celery_policy.fleet import diff, snapshot

        task = request.path_params["task"]
        try:
            explanation = explain(policy, task)
            envs = []
            base = snapshot(policy.with_env(None), [task])
            for env in policy.environments:
                changes = [c for c in diff(base, snapshot(policy.with_env(env), [task])) if c.section != "env"]
                envs.append({"env": env, "changes": changes})
        except PolicyError as exc:
            return console.render(request, "error.html", who, status_code=500, message=str(exc))
        charts = [(s, _schedule_chart(s)) for s in explanation.schedules]
        return console.render(request, "policy.html", who, x=explanation, charts=charts, envs=envs)

    return handler


def fleet_handler(console: Console, need: Callable[..., Any]) -> Handler:
    async def handler(request: Request) -> Response:
        who = need(console, request)
        if isinstance(who, Response):
            return who
        app = console.config.app
        if app is None:
            return console.render(request, "fleet.html", who, groups=[], error="the fleet needs --app (its broker)")
        from celery_policy.cli.fleet import _compare, _groups, _workers

        try:
            replies = app.control.broadcast(
                "policy_info", arguments={"detail": True}, reply=True, timeout=console.config.fleet_timeout_s
            )
        except Exception as exc:  # kombu raises OperationalError and socket errors, depending on the transport
            return console.render(request, "fleet.html", who, groups=[], error=f"cannot reach the broker: {exc}")
        workers = _workers(replies or [])
        expected = console.config.policy
        if expected is not None:
            for worker in workers:
                _compare(worker, expected)
        return console.render(
            request,
            "fleet.html",
            who,
            groups=_groups(workers),
            expected=expected,
            error=None if workers else f"no worker replied within {console.config.fleet_timeout_s:g}s",
        )

    return handler
