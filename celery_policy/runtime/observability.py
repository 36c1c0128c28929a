"""Logs, traces and error reports for policy decisions.

:func:`configure_logging` sets up structlog for a worker: JSON lines in
production, ``key=value`` lines in development. It does nothing when the
application already configured structlog, so a project's own logging setup
always wins.

:func:`record_decision` runs for every decision (:func:`celery_policy.runtime.events.log_decision`
calls it after the log event). When the libraries are installed it adds

- an OpenTelemetry span event ``celery_policy.decision`` to the current span
  (the task's span under ``opentelemetry-instrumentation-celery``), and
- a Sentry breadcrumb (category ``celery_policy``), so an error report of a
  later failure shows the retries that came before it;
- the Prometheus counters, when the policy switches them on
  (``observability.prometheus``, see :mod:`celery_policy.runtime.prometheus`).

Neither library is imported by celery-policy: a sink reports only when the application
imported the library itself (it has to, to set up a tracer provider or call
``sentry_sdk.init``), so a worker that merely has them installed does not load
sentry_sdk and its ~120 modules on its first failure. Extras ``[otel]`` and ``[sentry]``;
a failure inside either never changes the task's outcome.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Literal

import structlog

from celery_policy.runtime.decision import Decision

LogFormat = Literal["json", "kv"]
FORMAT_VARIABLE = "CELERY_POLICY_LOG_FORMAT"
SPAN_EVENT = "celery_policy.decision"
BREADCRUMB_CATEGORY = "celery_policy"


def configure_logging(
    fmt: LogFormat | None = None, *, level: int = logging.INFO, stream: Any = None, force: bool = False
) -> bool:
    """Configure structlog unless the application already did; True when this call configured it.

    ``fmt`` is ``"json"`` (one JSON object a line, for log shippers) or ``"kv"``
    (``key=value``, for people). Without it: ``$CELERY_POLICY_LOG_FORMAT``, else
    ``kv`` when ``stream`` is a terminal and ``json`` otherwise (a worker under
    systemd, Kubernetes or supervisord). Events go to ``stream`` (default stderr,
    so command output on stdout stays clean). ``force=True`` reconfigures even
    when structlog was configured before.
    """
    if structlog.is_configured() and not force:
        return False
    out = stream if stream is not None else sys.stderr
    chosen = fmt or _format_from_env() or ("kv" if _isatty(out) else "json")
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if chosen == "json"
        else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"], drop_missing=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    return True


def _format_from_env() -> LogFormat | None:
    value = os.environ.get(FORMAT_VARIABLE, "").strip().lower()
    if value in ("json", "kv"):
        return "json" if value == "json" else "kv"
    return None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --- decisions -> OpenTelemetry / Sentry ---------------------------------------------------------

Sink = Callable[[Decision, "BaseException | None"], None]
_sinks: list[Sink] | None = None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def sinks() -> list[Sink]:
    """The integrations whose libraries are installed, found once per process."""
    global _sinks  # noqa: PLW0603 - computed once, on the first decision
    if _sinks is None:
        found: list[Sink] = []
        if _installed("opentelemetry.trace"):
            found.append(_otel_span_event)
        if _installed("sentry_sdk"):
            found.append(_sentry_breadcrumb)
        _sinks = found
    return _sinks


def add_sink(sink: Sink) -> None:
    """Send every later decision of this process (and of the pool processes it forks) to ``sink`` too.

    The Prometheus counters (:mod:`celery_policy.runtime.prometheus`) register here at worker boot.
    """
    current = sinks()
    if sink not in current:
        current.append(sink)


def record_decision(decision: Decision, exc: BaseException | None) -> None:
    """Send one decision to every installed integration; their errors are swallowed."""
    for sink in sinks():
        try:
            sink(decision, exc)
        except Exception:  # observability must never change a task's outcome
            structlog.get_logger("celery_policy").debug("policy_observability_failed", sink=sink.__name__)


def _attributes(decision: Decision, exc: BaseException | None) -> dict[str, Any]:
    values: dict[str, Any] = {
        "celery_policy.decision": decision.action,
        "celery_policy.task": decision.task,
        "celery_policy.task_id": decision.task_id,
        "celery_policy.attempt": decision.attempt,
        "celery_policy.max_retries": decision.max_retries,
        "celery_policy.countdown": decision.countdown,
        "celery_policy.reason": decision.reason,
        "celery_policy.policy_source": decision.policy_source,
        "exception.type": decision.exc_type,
        "exception.message": str(exc)[:500] if exc is not None else None,
    }
    return {key: value for key, value in values.items() if value is not None}  # OTel attributes cannot be None


def _imported(module: str) -> Any:
    """The module if the application imported it, else None (then it cannot have been set up)."""
    return sys.modules.get(module)


def _otel_span_event(decision: Decision, exc: BaseException | None) -> None:
    trace = _imported("opentelemetry.trace")
    if trace is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(SPAN_EVENT, attributes=_attributes(decision, exc))


def _sentry_breadcrumb(decision: Decision, exc: BaseException | None) -> None:
    sentry_sdk = _imported("sentry_sdk")
    if sentry_sdk is None or not sentry_sdk.get_client().is_active():
        return
    countdown = f" in {decision.countdown:.3g}s" if decision.countdown is not None else ""
    sentry_sdk.add_breadcrumb(
        category=BREADCRUMB_CATEGORY,
        type="info" if decision.action == "retry" else "error",
        level="warning" if decision.action == "retry" else "error",
        message=f"{decision.task}: {decision.action}{countdown} after attempt {decision.attempt} ({decision.exc_type})",
        data=_attributes(decision, exc),
    )


# --- flow-control state changes -> OpenTelemetry / Sentry -----------------------------------------

FLOW_SPAN_EVENT = "celery_policy.breaker"


def record_flow_event(attributes: dict[str, Any]) -> None:
    """A breaker state change as a span event and a breadcrumb, like a decision; errors are swallowed."""
    values = {f"celery_policy.{key}": value for key, value in attributes.items() if value is not None}
    for sink in (_otel_flow_event, _sentry_flow_breadcrumb):
        module = "opentelemetry.trace" if sink is _otel_flow_event else "sentry_sdk"
        if not _installed(module):
            continue
        try:
            sink(values)
        except Exception:  # observability must never change a task's outcome
            structlog.get_logger("celery_policy").debug("policy_observability_failed", sink=sink.__name__)


def _otel_flow_event(values: dict[str, Any]) -> None:
    trace = _imported("opentelemetry.trace")
    if trace is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(FLOW_SPAN_EVENT, attributes=values)


def _sentry_flow_breadcrumb(values: dict[str, Any]) -> None:
    sentry_sdk = _imported("sentry_sdk")
    if sentry_sdk is None or not sentry_sdk.get_client().is_active():
        return
    state = values.get("celery_policy.state")
    sentry_sdk.add_breadcrumb(
        category=BREADCRUMB_CATEGORY,
        type="error" if state == "open" else "info",
        level="warning" if state == "open" else "info",
        message=f"breaker {values.get('celery_policy.breaker')}: {state}",
        data=values,
    )
