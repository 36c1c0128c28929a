"""PolicyTask and the per-task runtime: classify a failure, then retry, fail or dead-letter.

Everything here is compiled once per task at boot (:class:`TaskRuntime`); the
per-call cost of a task that succeeds is one extra Python frame (the ``run``
wrapper's ``try``), and tasks whose policy needs no wrapper get none.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

import redis
from celery import Task, signals
from celery.exceptions import Ignore, Reject, Retry, TaskPredicate, TimeLimitExceeded

from celery_policy.backoff import draw_delay
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import DeadLetterStore, StoreUnavailableError
from celery_policy.errors import PolicyError
from celery_policy.references import import_object
from celery_policy.resolve import ResolvedPolicy
from celery_policy.runtime.classify import Action, Classifier, Outcome
from celery_policy.runtime.events import ArgRenderer, Decision, call_hook, log_decision, logger, scrub
from celery_policy.runtime.idempotency import Entry, IdempotencyGuard, IdempotencyKeyError
from celery_policy.support import celery_stores_rejected_failure

# Delay before a message whose dead letter could not be written runs again: the first, doubling up to the
# last while the store stays down. Without it a requeued message comes straight back and re-runs in a hot loop.
STORE_DOWN_PAUSE_S = (0.5, 10.0)
RERAISE = object()  # handle_failure's answer: re-raise the original exception where it was caught
HEADER = "celery_policy"  # {"n": {counter: retries used}, "t0": first failure epoch seconds}
_WRAPPED = "__celery_policy_runtime__"
_CELERY_STORES_REJECTED_FAILURE = celery_stores_rejected_failure()

__all__ = ["HEADER", "PolicyTask", "PublishError", "TaskRuntime"]


class PublishError(Exception):
    """A task could not be published within ``producer.publish_retry``."""


class TaskRuntime:
    """The compiled policy of one task."""

    def __init__(
        self,
        resolved: ResolvedPolicy,
        run: Callable[..., Any] | None = None,
        shared: dict[int, tuple[Classifier, dict[str, Any], dict[bool, dict[str, Any]]]] | None = None,
    ) -> None:
        self.resolved = resolved
        self.name = resolved.task
        policy = resolved.policy
        self.policy = policy
        # Tasks matched by the same layers share one resolved TaskPolicy object; compile it once.
        compiled = shared.get(id(policy)) if shared is not None else None
        if compiled is None:
            try:
                compiled = (
                    Classifier(policy.retry, dict(resolved.groups)),
                    {
                        name: (import_object(target) if target else None)
                        for name, target in policy.hooks.model_dump().items()
                    },
                    {},
                )
            except (ImportError, AttributeError, TypeError) as exc:
                msg = f"task '{self.name}': {exc} ({resolved.source_of('retry')})"
                raise PolicyError(msg) from exc
            if shared is not None:
                shared[id(policy)] = compiled
        self.classifier, self.hooks, self._attrs = compiled
        self.deadline_s = policy.retry.deadline
        self.return_error = policy.result.on_failure == "return_error"
        self.dead_letter = policy.dead_letter.enabled
        self.args = ArgRenderer(policy.log, lambda: _param_names(run))
        self.max_redeliveries = policy.ack.max_redeliveries if policy.ack.late else None
        self.store: DeadLetterStore | None = None  # set by install() when dead letters or the redelivery cap need it
        self.counter_client: Any = None  # redis client for redelivery counters and idempotency keys
        self.idempotency: IdempotencyGuard | None = None  # set by bind_redis()
        self._store_failures = 0  # consecutive failed dead-letter writes in this process (paces requeues)
        self.needs_wrapper = (
            self.classifier.retries_anything
            or self.return_error
            or self.dead_letter
            or self.max_redeliveries is not None
            or policy.idempotency is not None
            or any(self.hooks.values())
        )

    @property
    def needs_redis(self) -> bool:
        return self.dead_letter or self.max_redeliveries is not None or self.policy.idempotency is not None

    def bind_redis(self, store: DeadLetterStore | None, client: Any) -> None:
        """Give the runtime its Redis: the dead-letter store and a client for counters and keys."""
        self.store = store if self.dead_letter or self.max_redeliveries is not None else None
        self.counter_client = client
        idem = self.policy.idempotency
        if idem is not None:
            timeout = self.policy.timeout
            lock_ttl = (timeout.hard or timeout.soft or 3600.0) + 30.0
            self.idempotency = IdempotencyGuard(idem, self.name, client, lock_ttl)
        self._store_outcome = Outcome(
            Action.RETRY,
            "store",
            self.policy.retry.max_retries,
            self.policy.retry.backoff,
            None,
            "exhausted",
            "idempotency",
        )

    # -- class attributes Celery reads ---------------------------------------------------------

    def task_attributes(self, has_split_acks: bool) -> dict[str, Any]:
        """Celery task attributes for the fields the policy sets (where it is silent, Celery's own values stand)."""
        cached = self._attrs.get(has_split_acks)
        if cached is None:
            cached = self._attrs[has_split_acks] = self._task_attributes(has_split_acks)
        return dict(cached)

    def _task_attributes(self, has_split_acks: bool) -> dict[str, Any]:
        resolved = self.resolved
        policy = self.policy
        attrs: dict[str, Any] = {}

        def is_set(path: str) -> bool:
            return resolved.source_of(path).layer != "builtin"

        if is_set("timeout.soft"):
            attrs["soft_time_limit"] = policy.timeout.soft
        if is_set("timeout.hard"):
            attrs["time_limit"] = policy.timeout.hard
        if is_set("timeout.expires"):
            attrs["expires"] = policy.timeout.expires
        if is_set("ack.late"):
            attrs["acks_late"] = policy.ack.late
        if is_set("ack.reject_on_worker_lost"):
            attrs["reject_on_worker_lost"] = policy.ack.reject_on_worker_lost
        if is_set("ack.on_failure_or_timeout"):
            attrs["acks_on_failure_or_timeout"] = policy.ack.on_failure_or_timeout
            if has_split_acks:  # Celery 5.7 reads these two and derives them before annotations run
                attrs["acks_on_failure"] = policy.ack.on_failure_or_timeout
                attrs["acks_on_timeout"] = policy.ack.on_failure_or_timeout
        if is_set("retry.max_retries"):
            # caps a task's own self.retry() calls too; the wrapper keeps its own counters
            attrs["max_retries"] = policy.retry.max_retries
        if is_set("rate_limit"):
            attrs["rate_limit"] = policy.rate_limit
        return attrs

    # -- the failure path ----------------------------------------------------------------------

    def handle_failure(
        self, task: Task, exc: Exception, args: Sequence[Any], kwargs: Mapping[str, Any], outcome: Outcome | None = None
    ) -> Any:
        """Called from inside the ``except`` of the run wrapper.

        Returns a ``Retry`` for the wrapper to raise, :data:`RERAISE` (re-raise ``exc``), or the
        value to return instead (``result.on_failure: return_error``).
        """
        request = task.request
        if request.called_directly:
            return RERAISE
        if outcome is None:
            outcome = self.classifier.classify(type(exc))
        if self.args.mode != "show":
            _mask_exception(exc, self.args.secrets(args, kwargs))
        state = _policy_header(request)
        counters: dict[str, int] = dict(state.get("n") or {})
        now = time.time()
        first = float(state.get("t0") or now)
        attempt = int(request.retries or 0) + 1
        if outcome.action is Action.RETRY:
            used = counters.get(outcome.counter, 0)
            if outcome.max_retries is None or used < outcome.max_retries:
                countdown = self._countdown(outcome, exc, used)
                if self.deadline_s is None or (now + countdown - first) <= self.deadline_s:
                    counters[outcome.counter] = used + 1
                    decision = self._decision("retry", task, request, attempt, outcome, countdown, exc, None)
                    log_decision(decision, self.args.render(args, kwargs), exc, self.args.secrets(args, kwargs))
                    call_hook(self.hooks["on_retry"], "on_retry", request, exc, decision)
                    headers = {k: v for k, v in (request.headers or {}).items() if k != "redelivered"}
                    headers[HEADER] = {"n": counters, "t0": first}
                    # throw=False: the wrapper raises it, so the traceback Celery renders (billiard's
                    # ExceptionInfo costs ~0.1 ms per frame on Python 3.11) stays as short as autoretry's.
                    try:
                        return task.retry(
                            exc=exc, countdown=countdown, max_retries=attempt, headers=headers, throw=False
                        )
                    except Reject as rejected:
                        # Celery turns a failed publish of the retry into Reject(requeue=False), which drops
                        # the message: with late ack put it back instead (it runs again once the broker is
                        # back, its retry counters unchanged); with early ack it is already gone from the
                        # broker, so record it as a dead letter rather than lose it silently.
                        if rejected.requeue:
                            raise
                        logger.error("retry_publish_failed", task=self.name, task_id=request.id, error=str(rejected))
                        if task.acks_late:
                            raise Reject(f"retry could not be published: {rejected.reason}", requeue=True) from exc
                        reason = "exhausted"
                        return self.give_up(task, request, exc, args, kwargs, attempt, outcome, reason)
                reason = "deadline"
            else:
                reason = outcome.reason
        else:
            reason = outcome.reason
        return self.give_up(task, request, exc, args, kwargs, attempt, outcome, reason)

    def give_up(
        self,
        task: Task,
        request: Any,
        exc: BaseException,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        attempt: int,
        outcome: Outcome | None,
        reason: str,
    ) -> Any:
        """Final failure: log, hooks, dead-letter decision, then raise or return the error result."""
        action = "dead_letter" if self.dead_letter else "fail"
        decision = self._decision(action, task, request, attempt, outcome, None, exc, reason)
        rendered = self.args.render(args, kwargs)
        if action == "dead_letter":
            republish_with = None if task.acks_late else task  # early ack: the message is already gone
            self.write_dead_letter(
                request, exc, args, kwargs, rendered, attempt, reason, decision, republish_with=republish_with
            )
        log_decision(decision, rendered, exc, self.args.secrets(args, kwargs))
        call_hook(self.hooks["on_failure"], "on_failure", request, exc, decision)
        if action == "dead_letter":
            call_hook(self.hooks["on_dead_letter"], "on_dead_letter", request, exc, decision)
        if self.return_error:
            return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc), "reason": reason}}
        return RERAISE

    def write_dead_letter(
        self,
        request: Any,
        exc: BaseException,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        rendered: Mapping[str, Any],
        attempt: int,
        reason: str,
        decision: Decision,
        *,
        republish_with: Task | None = None,
    ) -> None:
        """One record in the store before the message is acked; if the store is down the message runs
        again later (a dead letter is never silently dropped) after a delay of ``STORE_DOWN_PAUSE_S``,
        doubling per consecutive failure in this process:

        - an unacked message (``ack.late``): pause, then ``Reject(requeue=True)``;
        - a message already acked (early ack, or a hard time limit in the worker's main process, where
          Celery acks before ``on_failure``): ``republish_with`` publishes it again (same id, retry number
          and headers) with that countdown, then ``Ignore`` is raised; if even that fails,
          ``dead_letter_lost`` is logged and this returns.
        """
        secrets = self.args.secrets(args, kwargs)
        if self.store is None:
            return
        now = time.time()
        state = _policy_header(request)
        replayable = self.args.mode == "show" or (
            list(rendered.get("args", [])) == list(args) and dict(rendered.get("kwargs", {})) == dict(kwargs)
        )
        delivery = getattr(request, "delivery_info", None) or {}
        record = DeadLetter(
            task=self.name,
            task_id=getattr(request, "id", None),
            args=list(rendered.get("args", [])) if self.args.mode != "show" else list(args),
            kwargs=dict(rendered.get("kwargs", {})) if self.args.mode != "show" else dict(kwargs),
            replayable=replayable,
            reason=reason,
            exc_type=decision.exc_type,
            exc_message=scrub(str(exc), secrets)[:2000],
            traceback=scrub("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), secrets)[-8000:],
            attempts=attempt,
            first_failure=float(state.get("t0") or now),
            last_failure=now,
            hostname=getattr(request, "hostname", None) or socket.gethostname(),
            queue=delivery.get("routing_key"),
            policy_source=decision.policy_source,
        )
        try:
            self.store.add(record)
        except StoreUnavailableError as store_exc:
            self._store_failures += 1
            first_s, max_s = STORE_DOWN_PAUSE_S
            delay_s = min(max_s, first_s * 2 ** (self._store_failures - 1))
            logger.error(
                "dead_letter_store_unavailable",
                task=self.name,
                task_id=record.task_id,
                reason=reason,
                again_in_s=delay_s,
                error=str(store_exc),
            )
            if republish_with is None:
                time.sleep(delay_s)
                raise Reject(f"dead-letter store unavailable: {store_exc}", requeue=True) from store_exc
            if _publish_again(republish_with, request, args, kwargs, delay_s):
                raise Ignore() from store_exc
            return
        self._store_failures = 0

    def check_redelivery(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Poison-pill cap: count broker redeliveries of this (task id, retry) and dead-letter past the cap.

        Only redelivered messages pay a Redis round trip; ``delivery_info['redelivered']`` is read,
        never the ``redelivered`` header, which leaks into retries.
        """
        request = task.request
        delivery = request.delivery_info or {}
        if not delivery.get("redelivered") or self.counter_client is None:
            return
        key = f"celery-policy:dlv:{{{request.id}}}:{request.retries or 0}"
        pipe = self.counter_client.pipeline()
        pipe.incr(key)
        pipe.expire(key, 7 * 86400)
        try:
            count = int(pipe.execute()[0])
        except redis.RedisError as counter_exc:
            # The counter lives in the dead-letter store. Raising here would fail (and ack) the message, so a
            # store outage would drop it: run it uncounted instead, the cap applies again once the store is back.
            logger.error("redelivery_counter_unavailable", task=self.name, task_id=request.id, error=str(counter_exc))
            return
        assert self.max_redeliveries is not None
        if count <= self.max_redeliveries:
            return
        exc = RuntimeError(
            f"message redelivered {count} times after lost workers (max_redeliveries={self.max_redeliveries})"
        )
        attempt = int(request.retries or 0) + 1
        decision = self._decision("dead_letter", task, request, attempt, None, None, exc, "redelivery_limit")
        decision = Decision(
            **{**decision.as_dict(), "policy_source": str(self.resolved.source_of("ack.max_redeliveries"))}
        )
        rendered = self.args.render(args, kwargs)
        self.write_dead_letter(request, exc, args, kwargs, rendered, attempt, "redelivery_limit", decision)
        log_decision(decision, rendered, exc, self.args.secrets(args, kwargs))
        call_hook(self.hooks["on_dead_letter"], "on_dead_letter", request, exc, decision)
        rejected = Reject(str(exc), requeue=False)
        if not _CELERY_STORES_REJECTED_FAILURE:
            _store_rejected_failure(task, request, rejected, args, kwargs)
        raise rejected

    # -- guards before the body: redelivery cap and idempotency ---------------------------------------

    def enter(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Entry | None:
        """Run before the body. Returns an idempotency entry (``duplicate`` = skip the body), or None.

        On the hot path this is one request look-up and a dict read: the redelivery
        counter is touched only for redelivered messages.
        """
        request = task.request
        if self.max_redeliveries is not None:
            delivery = request.delivery_info
            if delivery and delivery.get("redelivered"):
                self.check_redelivery(task, args, kwargs)
        guard = self.idempotency
        if guard is None or request.called_directly:
            return None
        try:
            entry = guard.enter(request.id, args, kwargs)
        except Exception as exc:  # Redis down: retry per the policy instead of running unguarded
            if isinstance(exc, TaskPredicate):
                raise
            if isinstance(exc, IdempotencyKeyError):
                # These arguments can never produce a key: no retry helps, the body must not run unguarded.
                logger.error("idempotency_key_invalid", task=self.name, task_id=task.request.id, error=str(exc))
                failing = Outcome(Action.FAIL, "", 0, self.policy.retry.backoff, None, "permanent", "idempotency.key")
                outcome = self.handle_failure(task, exc, args, kwargs, failing)
            else:
                logger.error("idempotency_store_unavailable", task=self.name, task_id=task.request.id, error=str(exc))
                outcome = self.handle_failure(task, exc, args, kwargs, self._store_outcome)
            if isinstance(outcome, Retry):
                raise outcome from None
            if outcome is RERAISE:
                raise
            return Entry("", "", duplicate=True, result=outcome)  # return_error: the error result, body skipped
        if entry.duplicate:
            logger.info("policy_duplicate_skipped", task=self.name, task_id=task.request.id, key=entry.key)
        elif entry.busy:
            # Another delivery holds the lock and is running the body now: come back when it should be done.
            raise task.retry(countdown=1.0, max_retries=int(task.request.retries or 0) + 1)
        return entry

    def succeeded(self, entry: Entry | None, result: Any) -> None:
        if entry is None or self.idempotency is None:
            return
        try:
            self.idempotency.success(entry, result)
        except Exception as exc:  # the work is done; failing now would only cause a re-run
            logger.error("idempotency_mark_failed", task=self.name, key=entry.key, error=str(exc))

    def release(self, entry: Entry | None) -> None:
        if entry is None or self.idempotency is None:
            return
        try:
            self.idempotency.release(entry)
        except Exception as exc:  # the lock expires on its own
            logger.warning("idempotency_release_failed", task=self.name, key=entry.key, error=str(exc))

    def _countdown(self, outcome: Outcome, exc: BaseException, used: int) -> float:
        if outcome.delay_from is not None:
            value = getattr(exc, outcome.delay_from, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                return min(float(value), outcome.backoff.max)
        return draw_delay(outcome.backoff, used)

    def _decision(
        self,
        action: str,
        task: Task,
        request: Any,
        attempt: int,
        outcome: Outcome | None,
        countdown: float | None,
        exc: BaseException,
        reason: str | None,
    ) -> Decision:
        path = outcome.source_path if outcome is not None else "timeout.hard"
        budget = outcome.max_retries if outcome is not None else None
        return Decision(
            action=action,
            task=self.name,
            task_id=getattr(request, "id", None),
            attempt=attempt,
            max_retries=budget,
            countdown=countdown,
            exc_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            reason=reason,
            # provenance is recorded per field: "retry.rules[1]" was set by whoever set "retry.rules"
            policy_source=str(self.resolved.source_of(path.partition("[")[0])),
        )


def _mask_exception(exc: BaseException, secrets: Sequence[str]) -> None:
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


def _policy_header(request: Any) -> Mapping[str, Any]:
    headers = request.headers
    if not headers:
        return {}
    value = headers.get(HEADER)
    return value if isinstance(value, Mapping) else {}


def _param_names(run: Callable[..., Any] | None) -> list[str]:
    if run is None:
        return []
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def wrap_run(task: Task, runtime: TaskRuntime) -> None:
    """Install the policy wrapper as the instance's ``run`` (as Celery's autoretry does).

    A decorator's ``autoretry_for`` wrapper is removed: where the policy governs
    retries it wins, and two retry loops around one body would multiply attempts.
    """
    inner = _unwrapped_run(task)
    if inner is None:
        return
    handle = runtime.handle_failure
    # Three variants written out on purpose: each call pays only for what its policy needs (no flag
    # tests on the hot path), and failures are re-raised from this frame to keep tracebacks short.

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


def runtime_of(task: Task) -> TaskRuntime | None:
    """The runtime bound to a task by install(), if any."""
    found = getattr(type(task), "_celery_policy", None)
    return found if isinstance(found, TaskRuntime) else None


class PolicyTask(Task):  # type: ignore[misc]  # celery is untyped
    """Base class for tasks run under a policy: ``Celery(..., task_cls=celery_policy.PolicyTask)``.

    The run wrapper (installed by :func:`celery_policy.install`) classifies
    exceptions raised in the body. This class adds what a wrapper cannot see:
    the hard time limit, which Celery reports to ``on_failure`` in the worker's
    main process, and a clear :class:`PublishError` when the broker is gone.
    """

    abstract = True
    _celery_policy: TaskRuntime | None = None

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        runtime = self._celery_policy
        if runtime is not None and isinstance(exc, TimeLimitExceeded) and _requeued_on_timeout(self):
            # acks_late without acks_on_timeout: Request.on_timeout requeues the message right after this and
            # it runs again, so this is no final failure (no fail/dead_letter decision, hook or record).
            decision = runtime._decision("requeue", self, _ParentRequest(task_id), 1, None, None, exc, "time_limit")
            log_decision(decision, runtime.args.render(args or (), kwargs or {}), exc)
        elif runtime is not None and isinstance(exc, TimeLimitExceeded):
            # Runs in the parent with an empty request (celery/worker/request.py on_timeout).
            request = _ParentRequest(task_id)
            attempt = request.retries + 1
            dead_letter = runtime.dead_letter and runtime.policy.dead_letter.on_time_limit
            decision = runtime._decision(
                "dead_letter" if dead_letter else "fail", self, request, attempt, None, None, exc, "time_limit"
            )
            rendered = runtime.args.render(args or (), kwargs or {})
            if dead_letter:
                # Celery acked the message before calling this: if the store is down, it is published again
                with contextlib.suppress(Ignore):
                    runtime.write_dead_letter(
                        request,
                        exc,
                        args or (),
                        kwargs or {},
                        rendered,
                        attempt,
                        "time_limit",
                        decision,
                        republish_with=self,
                    )
            log_decision(decision, rendered, exc, runtime.args.secrets(args or (), kwargs or {}))
            call_hook(runtime.hooks["on_failure"], "on_failure", request, exc, decision)
            if dead_letter:
                call_hook(runtime.hooks["on_dead_letter"], "on_dead_letter", request, exc, decision)
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        try:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        except _PUBLISH_ERRORS as exc:
            broker = _safe_broker(self.app)
            msg = f"could not publish task '{self.name}' to {broker}: {exc} (producer.publish_retry gave up)"
            raise PublishError(msg) from exc


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
        context = _calling_request_context(task_id)
        if context is not None:
            self.retries = int(getattr(context, "retries", 0) or 0)
            self.headers = dict(getattr(context, "headers", None) or {})
            self.delivery_info = dict(getattr(context, "delivery_info", None) or {})
            self.hostname = getattr(context, "hostname", None)


def _publish_again(
    task: Task, request: Any, args: Sequence[Any], kwargs: Mapping[str, Any], countdown_s: float
) -> bool:
    """Publish an already acked message again (same task id, retry number, headers and queue) after
    ``countdown_s``; False, with ``dead_letter_lost`` logged, when even that fails."""
    headers = {k: v for k, v in (getattr(request, "headers", None) or {}).items() if k != "redelivered"}
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    options: dict[str, Any] = {"queue": queue} if queue else {}
    try:
        task.apply_async(
            list(args),
            dict(kwargs),
            task_id=request.id,
            retries=int(request.retries or 0),
            headers=headers,
            countdown=countdown_s,
            **options,
        )
    except Exception as exc:  # the broker is down too: nothing is left to keep the message
        logger.error("dead_letter_lost", task=task.name, task_id=request.id, error=f"{type(exc).__name__}: {exc}")
        return False
    return True


def _store_rejected_failure(
    task: Task, request: Any, rejected: Reject, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    """What Celery 5.7's worker does for ``Reject(requeue=False)`` and older releases do not (celery#4222).

    Store FAILURE (which also fails the chord the task belongs to and calls its errbacks) and send
    ``task_failure``. Without it the task stays PENDING/STARTED and a chord waiting on it never finishes.
    """
    store_result = not task.ignore_result or task.store_errors_even_if_ignored
    try:
        task.backend.mark_as_failure(request.id, rejected, request=request, store_result=store_result)
    except Exception as exc:  # the result backend is down: the message is dropped as Celery would, the record stays
        logger.error("rejected_failure_not_stored", task=task.name, task_id=request.id, error=str(exc))
    signals.task_failure.send(
        sender=task, task_id=request.id, exception=rejected, args=args, kwargs=kwargs, traceback=None, einfo=None
    )


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
