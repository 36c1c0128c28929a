"""What a task's own code and decorator say about its failure handling, read without the runtime.

Shared by the runtime (``install``), the ``--app`` snapshot of ``check`` and
``init``: the decorator options a policy can also set, the attribute under
which an app keeps its installed policy, a static look at hand-written
retries, and what the policy cannot compose with a task's own class.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # celery is imported only where an app is at hand: `check` without --app never loads it
    from celery import Celery, Task

APP_ATTR = "_celery_policy_runtime"  # the installed policy's runtime, on the app

# Decorator options celery-policy takes over; where the policy sets the same field, the policy wins.
DECORATOR_OPTIONS = (
    "time_limit", "soft_time_limit", "expires", "acks_late", "reject_on_worker_lost",
    "acks_on_failure_or_timeout", "max_retries", "default_retry_delay", "rate_limit",
    "autoretry_for", "dont_autoretry_for", "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter",
)  # fmt: skip

__all__ = [
    "APP_ATTR",
    "DECORATOR_OPTIONS",
    "OwnRetries",
    "config_values",
    "declared_options",
    "installed_runtime",
    "own_retries",
]


def config_values(app: Celery) -> dict[str, Any]:
    """The app settings ``Task.bind`` copies onto task classes (``Task.from_config``), by attribute name."""
    from celery import Task

    return {attr: app.conf.get(setting) for attr, setting in Task.from_config if attr in DECORATOR_OPTIONS}


def declared_options(task_cls: type[Task], app: Celery, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The failure-handling options a task's decorator (or class body) set.

    ``Task.bind`` copies app settings onto the class for unset attributes
    (``Task.from_config``); values equal to those settings, and None, are not
    counted as declared. Pass ``settings`` (:func:`config_values`) when calling
    this for many tasks: reading ``app.conf`` is slow.
    """
    if settings is None:
        settings = config_values(app)
    attrs = vars(task_cls)
    declared: dict[str, Any] = {}
    for key in DECORATOR_OPTIONS:
        value = attrs.get(key)
        if value is None or (key in settings and settings[key] == value):
            continue
        declared[key] = value
    return declared


def installed_runtime(app: Any) -> Any:
    """The runtime ``celery_policy.install`` left on ``app``, or None."""
    return getattr(app, APP_ATTR, None)


# -- hand-written retries: what a task's own code does with Celery's retry machinery ---------------

RETRY_ATTRIBUTES = frozenset(
    {
        "retry_backoff", "retry_backoff_max", "retry_jitter", "retry_kwargs", "max_retries",
        "default_retry_delay", "autoretry_for", "dont_autoretry_for",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class OwnRetries:
    """What a task's body (and the functions it hands the task to) does with retries.

    ``calls_retry``: it calls ``<task>.retry(...)``; ``reads``: the task options it reads
    (``self.retry_backoff``, ``task.retry_kwargs``...), each with where it reads it.
    """

    calls_retry: bool = False
    reads: tuple[tuple[str, str], ...] = ()  # (option, "module.function:line")

    @property
    def read_options(self) -> frozenset[str]:
        return frozenset(option for option, _ in self.reads)

    def where(self, option: str) -> str:
        return next((place for name, place in self.reads if name == option), "")


def own_retries(task: Any, depth: int = 2) -> OwnRetries:
    """A static look at the task's body: does it call ``retry`` or read its own retry options?

    The body is parsed with :mod:`ast` (nothing runs). A call that passes the
    task object on to a plain function of the same code base (``handle_retry(self, ...)``)
    is followed ``depth`` levels. Anything that cannot be read (no source, a C
    function) counts as doing nothing.
    """
    body = _body_of(task)
    if body is None:
        return OwnRetries()
    names = _task_names(task, body)
    calls: set[bool] = set()
    reads: dict[str, str] = {}
    _scan(body, names, depth, calls, reads, set())
    return OwnRetries(bool(calls), tuple(sorted(reads.items())))


def _body_of(task: Any) -> Any:
    run: Any = task.__dict__.get("_orig_run") if hasattr(task, "__dict__") else None
    run = run or getattr(task, "run", None)
    while run is not None and hasattr(run, "__wrapped__"):
        run = run.__wrapped__
    return getattr(run, "__func__", run)


def _task_names(task: Any, body: Any) -> set[str]:
    """Names the task object goes by inside its body: its first parameter when bound, the function's own name."""
    names = {"self", getattr(body, "__name__", "")}
    try:
        params = list(inspect.signature(body).parameters)
    except (TypeError, ValueError):
        params = []
    if params and getattr(task, "__self__", None) is None and params[0] in {"self", "task", "t"}:
        names.add(params[0])
    return {n for n in names if n}


def _scan(func: Any, names: set[str], depth: int, calls: set[bool], reads: dict[str, str], seen: set[Any]) -> None:
    if func in seen:
        return
    seen.add(func)
    try:
        source = textwrap.dedent(inspect.getsource(func))
        tree = ast.parse(source)
        first_line = func.__code__.co_firstlineno
    except (OSError, TypeError, SyntaxError, AttributeError):
        return
    where = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
            if node.attr == "retry":
                calls.add(True)
            elif node.attr in RETRY_ATTRIBUTES:
                reads.setdefault(node.attr, f"{where}:{first_line + node.lineno - 1}")
        elif isinstance(node, ast.Call):
            _scan_call(node, func, names, depth, calls, reads, seen, where, first_line)


def _scan_call(
    node: ast.Call,
    func: Any,
    names: set[str],
    depth: int,
    calls: set[bool],
    reads: dict[str, str],
    seen: set[Any],
    where: str,
    first_line: int,
) -> None:
    callee = node.func
    # getattr(self, "retry_backoff")
    if isinstance(callee, ast.Name) and callee.id == "getattr" and len(node.args) >= 2:
        target, attr = node.args[0], node.args[1]
        if isinstance(target, ast.Name) and target.id in names and isinstance(attr, ast.Constant):
            if attr.value == "retry":
                calls.add(True)
            elif attr.value in RETRY_ATTRIBUTES:
                reads.setdefault(str(attr.value), f"{where}:{first_line + node.lineno - 1}")
        return
    if depth <= 0 or not isinstance(callee, ast.Name):
        return
    passed = [i for i, arg in enumerate(node.args) if isinstance(arg, ast.Name) and arg.id in names]
    passed_kw = [kw.arg for kw in node.keywords if isinstance(kw.value, ast.Name) and kw.value.id in names]
    if not passed and not passed_kw:
        return
    target_func = getattr(func, "__globals__", {}).get(callee.id)
    if not inspect.isfunction(target_func):
        return
    try:
        params = list(inspect.signature(target_func).parameters)
    except (TypeError, ValueError):
        return
    inner = {params[i] for i in passed if i < len(params)} | {k for k in passed_kw if k}
    if inner:
        _scan(target_func, inner, depth - 1, calls, reads, seen)


# -- app settings a policy can take over -------------------------------------------------------------

# app.conf setting -> the policy field that replaces it (a task field, or "worker.*" / "route")
POLICY_SETTINGS: dict[str, str] = {
    "task_time_limit": "timeout.hard",
    "task_soft_time_limit": "timeout.soft",
    "task_acks_late": "ack.late",
    "task_reject_on_worker_lost": "ack.reject_on_worker_lost",
    "task_acks_on_failure_or_timeout": "ack.on_failure_or_timeout",
    "task_default_rate_limit": "rate_limit",
    "task_routes": "route",
    "worker_prefetch_multiplier": "worker.prefetch_multiplier",
    "task_track_started": "worker.track_started",
    "result_expires": "worker.result_expires",
    "worker_pool": "worker.pool",
    "worker_concurrency": "worker.concurrency",
    "worker_max_tasks_per_child": "worker.max_tasks_per_child",
}
_ALSO_READ = ("task_default_retry_delay", "task_annotations", "broker_transport_options")


def conf_values(app: Any) -> dict[str, Any]:
    """The app settings ``init`` and ``check --app`` read, as the app set them before a policy was installed.

    ``install()`` keeps a copy before it changes ``app.conf``; without a policy, ``app.conf`` itself.
    """
    runtime = installed_runtime(app)
    before = getattr(runtime, "conf_before", None)
    if isinstance(before, dict):
        return dict(before)
    conf = app.conf
    return {key: conf.get(key) for key in (*POLICY_SETTINGS, *_ALSO_READ)}


def changed_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The settings of :data:`POLICY_SETTINGS` that differ from Celery's defaults."""
    from celery.app.defaults import DEFAULTS

    return {k: values.get(k) for k in POLICY_SETTINGS if values.get(k) is not None and values.get(k) != DEFAULTS.get(k)}


# -- what the policy cannot compose with a task's own class ----------------------------------------------

COMPOSED_METHODS = ("on_failure", "apply_async", "retry")


def composition_problems(task: Any) -> list[tuple[str, str]]:
    """Why the policy's ``on_failure``/``apply_async``/``retry`` cannot wrap this task's own: (method, why).

    ``install()`` wraps the methods of the task's class. That does not reach a
    method set on the task instance (it shadows the class), nor a method made a
    ``staticmethod``/``classmethod`` (it does not take the task as ``self``).
    """
    problems: list[tuple[str, str]] = []
    instance_attrs = vars(task) if hasattr(task, "__dict__") else {}
    for name in COMPOSED_METHODS:
        if name in instance_attrs:
            problems.append((name, f"{name} is set on the task instance, which hides the policy's {name} on the class"))
            continue
        static = inspect.getattr_static(type(task), name, None)
        if isinstance(static, (staticmethod, classmethod)):
            kind = type(static).__name__
            problems.append((name, f"{name} is a {kind} on {_owner(type(task), name)}; the policy cannot wrap it"))
    return problems


def needs_method(method: str, *, hard_limit: bool, self_retry: bool, publish_retry: bool) -> bool:
    """Whether a task's effective policy relies on the composed ``method``."""
    return {"on_failure": hard_limit, "retry": self_retry, "apply_async": publish_retry}.get(method, False)


def _owner(cls: type, name: str) -> str:
    for klass in cls.__mro__:
        if name in vars(klass):
            return f"{klass.__module__}.{klass.__qualname__}"
    return cls.__qualname__
