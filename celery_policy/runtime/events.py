"""Structured log events for decisions, argument redaction and hook calls."""

from __future__ import annotations

import contextlib
import functools
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from celery_policy.model import LogPolicy
from celery_policy.runtime.decision import Decision
from celery_policy.runtime.observability import record_decision

__all__ = ["REDACTED", "ArgRenderer", "call_hook", "log_decision", "logger", "mask_exception", "scrub"]

logger = structlog.get_logger("celery_policy")
REDACTED = "***"
_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200


class ArgRenderer:
    """Renders task arguments for logs and dead-letter records per ``log`` policy."""

    def __init__(self, policy: LogPolicy, param_names: Callable[[], Sequence[str]]) -> None:
        self.mode = policy.args
        self.keys = _keys(tuple(policy.redact_keys))
        self._param_names = param_names  # computed on the first failure, not at boot
        self._names: tuple[str, ...] | None = None

    @property
    def param_names(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._param_names())
        return self._names

    def render(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if self.mode == "hide":
            return {}
        if self.mode == "show":
            return {"args": [_safe(a) for a in args], "kwargs": {k: _safe(v) for k, v in kwargs.items()}}
        shown_args = []
        names = self.param_names if args else ()
        for index, value in enumerate(args):
            name = names[index] if index < len(names) else ""
            shown_args.append(REDACTED if name.lower() in self.keys else self._scrub(value))
        shown_kwargs = {k: (REDACTED if k.lower() in self.keys else self._scrub(v)) for k, v in kwargs.items()}
        return {"args": shown_args, "kwargs": shown_kwargs}

    def secrets(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, ...]:
        """The string values redaction hides (4+ characters), to mask them in messages and tracebacks."""
        if self.mode == "show":
            return ()
        found: list[str] = []
        names = self.param_names if args else ()
        for index, value in enumerate(args):
            name = names[index] if index < len(names) else ""
            self._collect(value, self.mode == "hide" or name.lower() in self.keys, found, 0)
        for key, value in kwargs.items():
            self._collect(value, self.mode == "hide" or key.lower() in self.keys, found, 0)
        return tuple(sorted(set(found), key=len, reverse=True))

    def _collect(self, value: Any, secret: bool, found: list[str], depth: int) -> None:
        if depth > 8:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                self._collect(v, secret or str(k).lower() in self.keys, found, depth + 1)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self._collect(v, secret, found, depth + 1)
        elif secret and isinstance(value, (str, int)) and not isinstance(value, bool) and len(str(value)) >= 4:
            found.append(str(value))

    def _scrub(self, value: Any, depth: int = 0) -> Any:
        if depth > 8:
            return "…"
        if isinstance(value, Mapping):
            return {
                str(k): (REDACTED if str(k).lower() in self.keys else self._scrub(v, depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self._scrub(v, depth + 1) for v in value]
        return _safe(value)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret value replaced by ``***`` (exception messages often quote their input)."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def mask_exception(exc: BaseException, secrets: Sequence[str]) -> None:
    """Mask redacted argument values quoted in the exception's arguments.

    Celery logs the exception (and stores it as the FAILURE/RETRY result) after the
    wrapper re-raises it; a message like ``f"bad password {password!r}"`` would put
    the secret there. Best effort: exceptions that build ``str()`` from other state
    are left as they are.
    """
    if not secrets or not exc.args:
        return
    masked = tuple(scrub(arg, secrets) if isinstance(arg, str) else arg for arg in exc.args)
    if masked != exc.args:
        with contextlib.suppress(Exception):  # some exception types forbid setting args
            exc.args = masked


@functools.lru_cache(maxsize=256)
def _keys(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(k.lower() for k in names)


def _safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:199] + "…"
    return _repr.repr(value)


def log_decision(
    decision: Decision, rendered_args: Mapping[str, Any], exc: BaseException | None, secrets: Sequence[str] = ()
) -> None:
    """One structlog event per decision; ``secrets`` (redacted argument values) are masked in the message too."""
    method = logger.warning if decision.action == "retry" else logger.error
    method(
        "policy_decision",
        decision=decision.action,
        task=decision.task,
        task_id=decision.task_id,
        attempt=decision.attempt,
        max=decision.max_retries,
        countdown=None if decision.countdown is None else round(decision.countdown, 3),
        exc_type=decision.exc_type,
        exc_message=scrub(str(exc), secrets)[:500] if exc is not None else None,
        reason=decision.reason,
        policy_source=decision.policy_source,
        **rendered_args,
    )
    # OpenTelemetry span event / Sentry breadcrumb when those libraries are installed (runtime/observability.py)
    record_decision(decision, exc)


def call_hook(
    hook: Callable[..., Any] | None, name: str, request: Any, exc: BaseException | None, decision: Decision
) -> None:
    """Run a user hook; its exceptions are logged and never change the task's outcome."""
    if hook is None:
        return
    try:
        hook(request, exc, decision)
    except Exception as hook_exc:  # a hook must never change the outcome
        logger.error(
            "policy_hook_failed",
            hook=name,
            task=decision.task,
            task_id=decision.task_id,
            error=f"{type(hook_exc).__name__}: {hook_exc}",
        )
