"""A small, Celery-free picture of an app for the ``--app`` cross-checks.

This is the one module of ``lint`` that looks at a Celery app. It loads the
app with :func:`celery_policy.appinfo.import_app` (as ``celery -A`` does, task
modules imported, finalized) and copies out what the rules need. No broker
connection is made.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from celery_policy.appinfo import AppLoadError, import_app, import_root
from celery_policy.taskoptions import OwnRetries, changed_settings, composition_problems, conf_values, own_retries

__all__ = ["AppLoadError", "AppSnapshot", "QueueInfo", "TaskSignature", "load_app"]

REDIS_VISIBILITY_DEFAULT_S = 3600.0  # kombu's Redis Channel.visibility_timeout (SQS uses 30 min, see below)
SQS_VISIBILITY_DEFAULT_S = 1800.0


@dataclass(frozen=True, slots=True)
class TaskSignature:
    """The parameters of a task's ``run`` (``self`` already bound away)."""

    positional: tuple[str, ...]
    keyword: tuple[str, ...]
    var_positional: bool
    var_keyword: bool

    def accepts_keyword(self, name: str) -> bool:
        return self.var_keyword or name in self.keyword

    def accepts_index(self, index: int) -> bool:
        return self.var_positional or index < len(self.positional)


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    queue_type: str | None = None  # "quorum", "classic", "stream" (x-queue-type) when declared
    delivery_limit: int | None = None  # x-delivery-limit when declared
    consumer_timeout_s: float | None = None  # x-consumer-timeout (RabbitMQ 3.12+, milliseconds) when declared
    exchange_type: str | None = None  # the queue's exchange type ("direct", "topic", ...) when declared


@dataclass(frozen=True, slots=True)
class AppSnapshot:
    """What the CP3xx (and a few CP2xx) rules know about the app."""

    spec: str
    root: str  # the directory the app's top-level package imports from
    tasks: Mapping[str, TaskSignature | None]
    declared_queues: Mapping[str, QueueInfo] | None  # None: app.conf.task_queues is not set
    default_queue: str
    default_queue_type: str
    create_missing_queues: bool
    pool: str
    broker_url: str
    broker_transport_options: Mapping[str, Any] = field(default_factory=dict)
    prefetch_multiplier: int = 4
    decorator_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # task -> option -> repr
    own_retries: Mapping[str, OwnRetries] = field(default_factory=dict)  # tasks whose code retries by hand
    settings: Mapping[str, str] = field(default_factory=dict)  # app.conf values a policy can replace -> repr
    not_composed: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # task -> (method, why)
    # Worker settings the deployment rules (CP220-CP223) read; None where this Celery has no such setting.
    celery_version: tuple[int, ...] = ()
    default_exchange_type: str = "direct"
    soft_shutdown_timeout_s: float | None = None  # worker_soft_shutdown_timeout (5.5+)
    eta_task_limit: int | None = None  # worker_eta_task_limit (5.6+); None also when unset
    deduplicate_successful_tasks: bool = False  # worker_deduplicate_successful_tasks
    result_backend: str | None = None
    result_expires_s: float | None = None  # None: results never expire
    task_acks_late: bool = False  # task_acks_late, the app-wide default a policy's ack.late overrides

    def has_setting(self, since: tuple[int, int]) -> bool:
        """Whether the Celery that loaded the app is ``since`` or newer (``(5, 5)``)."""
        return self.celery_version[:2] >= since

    @property
    def broker_scheme(self) -> str:
        """``redis``, ``sqs``, ``amqp``, ``memory``... (``rediss`` and ``redis+socket`` count as ``redis``)."""
        scheme = urlsplit(self.broker_url.split(";")[0]).scheme.lower() or "amqp"
        if scheme.startswith("redis") or scheme == "sentinel":
            return "redis"
        if scheme in {"pyamqp", "amqps", "librabbitmq"}:
            return "amqp"
        return scheme

    @property
    def visibility_timeout_s(self) -> float | None:
        """The broker's visibility timeout, or None for brokers that have none (AMQP, memory)."""
        configured = self.broker_transport_options.get("visibility_timeout")
        if isinstance(configured, (int, float)) and not isinstance(configured, bool):
            return float(configured)
        if self.broker_scheme == "redis":
            return REDIS_VISIBILITY_DEFAULT_S
        if self.broker_scheme == "sqs":
            return SQS_VISIBILITY_DEFAULT_S
        return None

    def declared_queue_types(self) -> dict[str, str]:
        """``x-queue-type`` of the queues the app declares in ``task_queues``."""
        return {name: q.queue_type for name, q in (self.declared_queues or {}).items() if q.queue_type}

    def user_tasks(self) -> list[str]:
        """Registered task names without Celery's own ``celery.*`` built-ins."""
        return sorted(name for name in self.tasks if not name.startswith("celery."))


def load_app(spec: str, cwd: str | None = None) -> AppSnapshot:
    """Import ``spec`` like ``celery -A``, finalize the app and snapshot it. Raises :class:`AppLoadError`."""
    directory = os.path.abspath(cwd or os.getcwd())
    app = import_app(spec, directory, finalize=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the report
            return _snapshot(app, spec, import_root(spec, directory))
    except (Exception, SystemExit) as exc:
        msg = f"cannot load the tasks of Celery app '{spec}': {type(exc).__name__}: {exc}"
        raise AppLoadError(msg) from exc


def _snapshot(app: Any, spec: str, root: str) -> AppSnapshot:
    conf = app.conf
    tasks = {str(name): _signature(task) for name, task in dict(app.tasks).items()}
    options = conf.broker_transport_options or {}
    prefetch = conf.worker_prefetch_multiplier
    return AppSnapshot(
        spec=spec,
        root=root,
        tasks=tasks,
        declared_queues=_queues(conf.task_queues),
        default_queue=str(conf.task_default_queue or "celery"),
        default_queue_type=str(conf.get("task_default_queue_type") or "classic"),
        create_missing_queues=bool(conf.task_create_missing_queues),
        pool=str(conf.worker_pool or "prefork"),
        broker_url=str(conf.broker_url or "amqp://"),
        broker_transport_options=dict(options) if isinstance(options, Mapping) else {},
        prefetch_multiplier=int(prefetch) if isinstance(prefetch, int) else 4,
        decorator_options=_decorator_options(app),
        own_retries=_own_retries(app),
        not_composed={
            str(name): tuple(found)
            for name, task in dict(app.tasks).items()
            if not str(name).startswith("celery.") and (found := composition_problems(task))
        },
        settings={k: _show(v) for k, v in changed_settings(conf_values(app)).items()},
        celery_version=_celery_version(),
        default_exchange_type=str(conf.task_default_exchange_type or "direct"),
        soft_shutdown_timeout_s=_number(conf.get("worker_soft_shutdown_timeout")),
        eta_task_limit=_int(conf.get("worker_eta_task_limit")),
        deduplicate_successful_tasks=bool(conf.get("worker_deduplicate_successful_tasks")),
        result_backend=str(conf.result_backend) if conf.result_backend else None,
        result_expires_s=_seconds(conf.result_expires),
        task_acks_late=bool(conf.task_acks_late),
    )


def _own_retries(app: Any) -> dict[str, OwnRetries]:
    found: dict[str, OwnRetries] = {}
    for name, task in dict(app.tasks).items():
        if str(name).startswith("celery."):
            continue
        own = own_retries(task)
        if own.calls_retry or own.reads:
            found[str(name)] = own
    return found


def _show(value: Any) -> str:
    """An option's value as the user wrote it: classes by name, not ``<class '...'>``."""
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, type) for v in value):
        return "(" + ", ".join(v.__name__ for v in value) + ("," if len(value) == 1 else "") + ")"
    if callable(value) and hasattr(value, "__name__"):
        return str(value.__name__)
    if isinstance(value, (tuple, list)) and any(callable(v) for v in value):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _celery_version() -> tuple[int, ...]:
    import celery

    parts: list[int] = []
    for piece in str(celery.__version__).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _seconds(value: Any) -> float | None:
    """``result_expires``: a timedelta, a number of seconds, or None (never)."""
    total = getattr(value, "total_seconds", None)
    if callable(total):
        return float(total())
    return _number(value)


def _without_annotations(app: Any, task: Any, declared: dict[str, Any]) -> dict[str, Any]:
    """Drop values that ``task_annotations`` put on the class (they are configuration, not decorator options)."""
    if not declared:
        return declared
    from celery.app.annotations import resolve_all

    annotated: dict[str, Any] = {}
    try:
        for entry in resolve_all(app.annotations, task):
            annotated.update(entry)
    except Exception:  # an annotation object that fails here fails in the worker too; not this rule's concern
        return declared
    return {k: v for k, v in declared.items() if not (k in annotated and annotated[k] == v)}


def _decorator_options(app: Any) -> dict[str, dict[str, str]]:
    """Options the tasks' decorators set that a policy can also set.

    When the app called ``celery_policy.install``, the runtime recorded them while binding
    (before the policy's values replaced them); otherwise they are still on the task classes.
    """
    from celery_policy.taskoptions import config_values, declared_options, installed_runtime

    runtime = installed_runtime(app)
    if runtime is not None:
        recorded: dict[str, dict[str, Any]] = runtime.decorator_options
    else:
        settings = config_values(app)
        recorded = {
            str(name): _without_annotations(app, task, declared_options(type(task), app, settings))
            for name, task in dict(app.tasks).items()
        }
    return {name: {k: _show(v) for k, v in options.items()} for name, options in recorded.items() if options}


def _signature(task: Any) -> TaskSignature | None:
    try:
        signature = inspect.signature(task.run)
    except (TypeError, ValueError, AttributeError):
        return None
    positional: list[str] = []
    keyword: list[str] = []
    var_positional = var_keyword = False
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional.append(param.name)
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            keyword.append(param.name)
        var_positional = var_positional or param.kind == param.VAR_POSITIONAL
        var_keyword = var_keyword or param.kind == param.VAR_KEYWORD
    return TaskSignature(tuple(positional), tuple(keyword), var_positional, var_keyword)


def _queues(declared: Any) -> dict[str, QueueInfo] | None:
    if not declared:
        return None
    found: dict[str, QueueInfo] = {}
    items = declared.items() if isinstance(declared, Mapping) else ((None, q) for q in declared)
    for key, queue in items:
        name = getattr(queue, "name", None) or key
        if not name:
            continue
        arguments = getattr(queue, "queue_arguments", None) or {}
        if isinstance(queue, Mapping):
            arguments = queue.get("queue_arguments") or {}
        queue_type = arguments.get("x-queue-type") if isinstance(arguments, Mapping) else None
        limit = arguments.get("x-delivery-limit") if isinstance(arguments, Mapping) else None
        consumer_timeout_ms = _number(arguments.get("x-consumer-timeout")) if isinstance(arguments, Mapping) else None
        exchange = getattr(queue, "exchange", None)
        exchange_type = getattr(exchange, "type", None) if exchange is not None else None
        found[str(name)] = QueueInfo(
            str(name),
            str(queue_type) if queue_type else None,
            _int(limit),
            consumer_timeout_ms / 1000.0 if consumer_timeout_ms is not None else None,
            str(exchange_type) if exchange_type else None,
        )
    return found
