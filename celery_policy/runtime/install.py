"""install(app): boot wiring. The only module that touches Celery's app and globals.

Order matters (see the Celery internals notes): attributes the worker reads
when its consumer starts (time limits, acks) must be on the task classes
before then, and ``autoretry`` options are frozen at registration. So the
policy is applied through a ``task_annotations`` object, which Celery calls
when each task class is bound, whatever its base class, including tasks
registered after ``install`` (autodiscovery). Everything that can fail is
resolved before anything is changed: a bad policy raises ``PolicyError`` and
leaves the app untouched.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, Task, signals
from celery.app.annotations import prepare as prepare_annotations
from celery.app.annotations import resolve_all as resolve_all_annotations

from celery_policy import transport as _reliable_fetch
from celery_policy.appinfo import setting as _setting
from celery_policy.deadletter.store import RedisStreamStore, store_url_for
from celery_policy.delivery import AMQP_SCHEMES, delayed_delivery_on
from celery_policy.errors import PolicyError
from celery_policy.lint.engine import boot_findings
from celery_policy.redis_urls import RedisUrlError
from celery_policy.references import check_references, ensure_import_root
from celery_policy.resolve import Policy, load
from celery_policy.runtime import amqp as _amqp
from celery_policy.runtime import eventloop as _eventloop
from celery_policy.runtime.flow import FlowRegistry
from celery_policy.runtime.routing import PolicyRouter
from celery_policy.runtime.task import compose
from celery_policy.runtime.task_runtime import TaskRuntime
from celery_policy.runtime.wrappers import wrap_run
from celery_policy.support import celery_handles_hard_timeouts
from celery_policy.taskoptions import APP_ATTR as _APP_ATTR
from celery_policy.taskoptions import conf_values, config_values, declared_options


class AppRuntime:
    """The policy applied to one app: compiled task runtimes, annotator and router."""

    def __init__(self, app: Celery, policy: Policy) -> None:
        self.app = app
        self.policy = policy
        self.router = PolicyRouter(policy)
        self.tasks: dict[str, TaskRuntime] = {}
        self.has_split_acks = hasattr(Task, "acks_on_failure")
        self.handles_hard_timeouts = celery_handles_hard_timeouts()
        self._verified = False
        self._store: RedisStreamStore | None = None
        self._flow: FlowRegistry | None = None
        self._compiled: dict[int, Any] = {}
        self.decorator_options: dict[str, dict[str, Any]] = {}  # what task decorators set, seen at binding
        self._settings: dict[str, Any] | None = None
        self.conf_before: dict[str, Any] | None = None  # app.conf as the app set it, before install() changed it
        # RabbitMQ: countdown retries through TTL bucket queues (runtime/amqp_delay.py); Redis: see transport/
        scheme = _reliable_fetch.broker_scheme(app)
        self.amqp_delay = scheme in AMQP_SCHEMES and delayed_delivery_on(policy.document, scheme)

    def verify_references(self) -> None:
        """Import every exception class and hook the policy names; raise PolicyError listing all failures.

        Deferred from install() to the first task binding, so a module may
        call install() before it defines the exceptions its policy names.
        """
        if self._verified:
            return
        ensure_import_root(None)
        diagnostics = check_references(self.policy.document, self.policy.location)
        if diagnostics:
            error = PolicyError(diagnostics=diagnostics)
            announce_boot_error(error)
            raise error
        self._verified = True

    def compile(self, name: str, task: Any = None) -> TaskRuntime:
        runtime = self.tasks.get(name)
        if runtime is None:
            self.verify_references()
            run = _body(task) if task is not None else None
            runtime = TaskRuntime(self.policy.for_task(name), run, self._compiled)
            runtime.amqp_delay = self.amqp_delay
            if runtime.needs_redis:
                store = self.store()
                runtime.bind_redis(store, store.client)
            gate = self.flow().gate_for(runtime)  # breaker / limit (runtime/flow.py)
            if gate is not None:
                runtime.bind_flow(gate)
            self.tasks[name] = runtime
        return runtime

    def flow(self) -> FlowRegistry:
        """The app's breakers and limits (their Redis client is made when a task first needs one)."""
        if self._flow is None:
            self._flow = FlowRegistry(self.policy, _broker_url(self.app))
        return self._flow

    def store(self) -> RedisStreamStore:
        """The dead-letter store, shared by all tasks; PolicyError when none can be derived."""
        if self._store is None:
            # RabbitMQ: dead_letter_store.backend amqp (or auto with an AMQP broker) -> '<queue>.dead' queues
            amqp_store = _amqp.amqp_store_for(self.app, self.policy)
            if amqp_store is not None:
                self._store = amqp_store
                return amqp_store  # type: ignore[no-any-return]  # same protocol, used through .add only
            settings = self.policy.document.dead_letter_store
            url = store_url_for(settings.url, _broker_url(self.app))
            if url is None:
                where = self.policy.location(("dead_letter_store",)) or self.policy.files[0]
                msg = (
                    "dead letters, max_redeliveries or idempotency are enabled but no store is configured "
                    f"and the broker is not Redis; set dead_letter_store.url ({where})"
                )
                raise PolicyError(msg)
            store = RedisStreamStore(url, settings.stream, settings.max_length)
            try:  # parse the URL now (a Redis Cluster client also fetches its slot map here)
                store.client  # noqa: B018
            except (RedisUrlError, redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                where = self.policy.location(("dead_letter_store", "url")) or self.policy.files[0]
                msg = f"dead-letter store {store.describe()}: {exc} ({where})"
                raise PolicyError(msg) from exc
            self._store = store
        return self._store

    def governs(self, name: str) -> bool:
        """Celery's own tasks (``celery.*``) follow the policy only when it names them explicitly."""
        return not name.startswith("celery.") or name in self.policy.document.tasks

    def apply(self, task_cls: type[Task], instance: Task | None) -> dict[str, Any]:
        """Attributes for a task class; installs the run wrapper on its instance."""
        if not self.governs(task_cls.name):
            return {}
        if self._settings is None:
            self._settings = config_values(self.app)
        declared = declared_options(task_cls, self.app, self._settings)
        if declared:
            self.decorator_options[task_cls.name] = declared
        runtime = self.compile(task_cls.name, instance)
        task_cls._celery_policy = runtime
        if instance is not None and runtime.wraps_run:
            wrap_run(instance, runtime)
        attributes = runtime.task_attributes(self.has_split_acks)
        attributes.update(compose(task_cls))  # whatever the base class: no PolicyTask needed in the MRO
        if not self.handles_hard_timeouts:  # Celery < 5.7: see runtime/request.py
            from celery_policy.runtime.request import request_class

            attributes["Request"] = request_class(task_cls.Request)
        return attributes


class PolicyAnnotator:
    """A ``task_annotations`` entry that applies the policy and keeps the user's own annotations.

    Celery applies only the first annotation object that answers for a task,
    so this one answers for every task: the user's annotations first, then
    the policy's values over them (where the policy speaks, it wins).
    """

    def __init__(self, runtime: AppRuntime, previous: Any) -> None:
        self.runtime = runtime
        self.previous = prepare_annotations(previous) if previous else ()

    def annotate(self, task_cls: type[Task]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for entry in resolve_all_annotations(self.previous, task_cls):
            merged.update(entry)
        instance = _registered_instance(task_cls)
        merged.update(self.runtime.apply(task_cls, instance))
        return merged

    def annotate_any(self) -> None:
        return None


def install(
    app: Celery,
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    env: str | None = None,
) -> Policy:
    """Load the policy and apply it to ``app``; returns the :class:`Policy`.

    ``path`` defaults to ``$CELERY_POLICY_FILE`` (several files separated by
    ``os.pathsep``) or ``policies/celery-policy.yaml``; ``env`` to
    ``$CELERY_POLICY_ENV``. Raises :class:`PolicyError` naming file:line:column
    before changing anything when the policy is invalid or a task's policy
    cannot be compiled.
    """
    try:
        return _install(app, path, env)
    except PolicyError as exc:
        announce_boot_error(exc)
        raise


def _install(
    app: Celery,
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    env: str | None,
) -> Policy:
    if getattr(app, _APP_ATTR, None) is not None:
        msg = "celery_policy.install() was already called for this app"
        raise PolicyError(msg)
    check_celery_release()
    if env is None:
        env = _setting(app, "CELERY_POLICY_ENV")
    if path is None:
        configured = _setting(app, "CELERY_POLICY_FILE")
        path = configured.split(os.pathsep) if configured else None
    policy = load(path, env=env, check_imports=False)
    # every error `check` reports stops the boot too
    findings = boot_findings(policy.raw, policy.env, (policy.document, policy.source))
    if findings:
        raise PolicyError(diagnostics=findings)
    runtime = AppRuntime(app, policy)
    registered = dict(app._tasks) if app.finalized else {}
    for name, task in registered.items():  # compile everything first: fail before changing anything
        if runtime.governs(name):
            runtime.compile(name, task)
    queue_plan = _amqp.plan_for(app, policy)  # RabbitMQ queue arguments (None for other brokers)
    reliable = _reliable_fetch.decide(app, policy)  # atomic take on a Redis broker; see celery_policy/transport/
    from celery_policy.runtime import prometheus  # observability.prometheus: the worker's /metrics endpoint

    delayed = _reliable_fetch.delayed_delivery_wanted(policy, reliable)  # countdowns wait in the broker's Redis

    prometheus.configure(app, policy)  # PolicyError now when prometheus_client is missing; starts at worker_init

    runtime.conf_before = conf_values(app)  # what init and check --app read: the app's own settings
    _apply_conf(app, policy)
    _reliable_fetch.configure(app, reliable, delayed)
    _amqp.apply_plan(app, policy, queue_plan)
    _eventloop.configure(app, _amqp.broker_url_of(app))  # amqp: an ack scheduled before the loop blocks goes out
    app.conf.task_routes = (runtime.router, *_as_routes(app.conf.task_routes))
    app.conf.task_annotations = (PolicyAnnotator(runtime, app.conf.task_annotations),)
    app.__dict__.pop("annotations", None)  # a cached_property: recompute from the new setting
    setattr(app, _APP_ATTR, runtime)
    from celery_policy.runtime.control import announce  # also registers the policy_info control command

    announce(app, runtime)  # logs policy_loaded (fingerprint, files) once the app's tasks are known
    if app.finalized:
        for task in registered.values():
            _apply_now(runtime, task)
    else:
        app.on_after_finalize.connect(lambda sender=None, **kw: _after_finalize(app), weak=False)
    return policy


def announce_boot_error(exc: PolicyError) -> None:
    """Under the ``celery`` command line, print the policy's findings before Celery's traceback.

    Celery reports an app that fails to import as a usage error followed by
    the whole traceback, which puts the one line that matters (file:line:col,
    rule, hint) last. Printed once per error; the error is still raised.
    """
    if getattr(exc, "_celery_policy_announced", False):
        return
    exc._celery_policy_announced = True  # type: ignore[attr-defined]  # a marker on this instance
    if "celery.bin.celery" not in sys.modules:
        return
    import click

    if click.get_current_context(silent=True) is None:
        return
    sys.stderr.write(f"celery-policy: the policy stops the worker's boot\n{exc}\n\n")
    sys.stderr.flush()


def check_celery_release() -> None:
    """Stop the boot with :class:`PolicyError` when the installed Celery lacks an internal the runtime uses.

    A Celery outside the tested lines (:data:`celery_policy.support.CELERY_LINES`) is refused too, unless
    ``CELERY_POLICY_ALLOW_UNTESTED_CELERY=1`` says the operator accepts that (then it is logged).
    """
    from celery_policy import support

    celery = support.installed("celery")
    problems = support.celery_problems()
    if problems:
        msg = (
            f"celery {celery.version} lacks internals celery-policy relies on: {', '.join(problems)}\n"
            f"  help: install a tested Celery ({celery.tested_lines()})"
        )
        raise PolicyError(msg)
    if celery.is_tested_line:
        return
    if os.environ.get("CELERY_POLICY_ALLOW_UNTESTED_CELERY") == "1":
        logging.getLogger("celery_policy").warning(
            "celery %s is not a tested release line (tested: %s); running because "
            "CELERY_POLICY_ALLOW_UNTESTED_CELERY=1", celery.version, celery.tested_lines(),
        )  # fmt: skip
        return
    msg = (
        f"celery {celery.version} is not a tested release line (tested: {celery.tested_lines()})\n"
        "  help: install a tested Celery, or set CELERY_POLICY_ALLOW_UNTESTED_CELERY=1 to run on it anyway"
    )
    raise PolicyError(msg)


def _after_finalize(app: Celery) -> None:
    """Tasks were bound (annotated) during finalize; a decorator's autoretry may have wrapped our wrapper since."""
    runtime: AppRuntime = getattr(app, _APP_ATTR)
    for name, task in app._tasks.items():
        task_runtime = runtime.tasks.get(name)
        if task_runtime is not None and task_runtime.needs_wrapper and "_orig_run" in task.__dict__:
            wrap_run(task, task_runtime)


def _apply_now(runtime: AppRuntime, task: Task) -> None:
    """For an app finalized before install(): set what annotations would have set."""
    for key, value in runtime.apply(type(task), task).items():
        setattr(type(task), key, value)
    type(task)._exec_options = None  # apply_async caches exec options per class


@signals.worker_init.connect(weak=False)  # type: ignore[untyped-decorator]  # celery is untyped
def _rewrap_at_worker_init(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None and getattr(app, _APP_ATTR, None) is not None:
        _after_finalize(app)


def runtime_for(app: Celery) -> AppRuntime | None:
    found = getattr(app, _APP_ATTR, None)
    return found if isinstance(found, AppRuntime) else None


def _registered_instance(task_cls: type[Task]) -> Task | None:
    app = task_cls._app
    instance = app._tasks.get(task_cls.name) if app is not None else None
    return instance if isinstance(instance, task_cls) else None


def _body(task: Any) -> Any:
    run = task.__dict__.get("_orig_run") or getattr(task, "run", None)
    return getattr(run, "__wrapped__", run)


def _broker_url(app: Celery) -> str | None:
    try:
        url = app.conf.broker_url or app.conf.broker_write_url
    except Exception:  # an unloadable config: no broker to derive from
        return None
    if isinstance(url, (list, tuple)):
        url = url[0] if url else None
    return str(url) if url else None


def _as_routes(routes: Any) -> tuple[Any, ...]:
    if not routes:
        return ()
    if isinstance(routes, (list, tuple)):
        return tuple(routes)
    return (routes,)


def _apply_conf(app: Celery, policy: Policy) -> None:
    worker = policy.document.worker
    conf = app.conf
    mapping = {
        "prefetch_multiplier": "worker_prefetch_multiplier",
        "track_started": "task_track_started",
        "result_expires": "result_expires",
        "pool": "worker_pool",
        "concurrency": "worker_concurrency",
        "max_tasks_per_child": "worker_max_tasks_per_child",
    }
    for field, setting in mapping.items():
        if field in worker.model_fields_set and getattr(worker, field) is not None:
            conf[setting] = getattr(worker, field)
    if worker.visibility_timeout is not None:
        options = dict(conf.broker_transport_options or {})
        options["visibility_timeout"] = worker.visibility_timeout
        conf.broker_transport_options = options
        result_options = dict(conf.result_backend_transport_options or {})
        result_options.setdefault("visibility_timeout", worker.visibility_timeout)
        conf.result_backend_transport_options = result_options
    publish = policy.document.producer.publish_retry
    if "producer" in policy.document.model_fields_set:
        conf.task_publish_retry = publish.max_retries > 0
        conf.task_publish_retry_policy = {
            "max_retries": publish.max_retries,
            "interval_start": publish.interval_start,
            "interval_step": publish.interval_step,
            "interval_max": publish.interval_max,
        }
