"""Snoozing: what a task does before its body when its breaker is open or its limit has no token.

A snoozed task is published again with a countdown (about the open time left, or
the wait for its token) and the same id, arguments, canvas, headers and queue;
its body does not run and ``request.retries`` does not change, so no retry is
spent. The message being run is acked (``Ignore``). Snoozes are counted in their
own header (:data:`SNOOZE_HEADER`), which survives retries; past
``snooze.deadline`` (time since the first snooze) or ``snooze.max`` the task
takes the normal final-failure path with reason ``breaker_open`` or
``rate_limited`` (fail, or a dead letter when the policy keeps them).

:func:`republish_snoozed` is the only place a snooze is published.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, TaskPredicate

from celery_policy.deadletter.store import store_url_for
from celery_policy.errors import PolicyError
from celery_policy.flow.state import PROBE, Breaker, BreakerState, Limit
from celery_policy.model import SnoozePolicy, snooze_deadline
from celery_policy.redis_urls import RedisUrlError, client_from_url, safe_url
from celery_policy.references import expand_refs, import_exception
from celery_policy.runtime.dead_letter import store_rejected_failure
from celery_policy.runtime.decision import Decision
from celery_policy.runtime.events import logger
from celery_policy.runtime.headers import headers_to_copy
from celery_policy.runtime.observability import record_decision, record_flow_event
from celery_policy.support import celery_stores_rejected_failure

if TYPE_CHECKING:
    from celery_policy.resolve import Policy
    from celery_policy.runtime.task_runtime import TaskRuntime

SNOOZE_HEADER = "celery_policy_snooze"  # {"n": snoozes so far, "t0": first snooze epoch s}
# A token at most this far away is reserved and waited for in the worker process; further away the task is
# snoozed. Waiting in place keeps a backlog in the broker's queue, where it belongs: a snoozed message goes
# to the back of its queue, and under a backlog it would come back long after its countdown.
LIMIT_WAIT_IN_PLACE_S = 1.0
MIN_SNOOZE_S = 0.05
# A snooze never waits longer than this before it asks again: a countdown message is held in a worker's memory,
# and one held past the Redis broker's visibility timeout would run twice.
MAX_SNOOZE_S = 300.0
_CELERY_STORES_REJECTED_FAILURE = celery_stores_rejected_failure()
JITTER_SHARE = 0.5  # a breaker snooze waits the open time left plus up to this share of it (spreads the return)

__all__ = [
    "SNOOZE_HEADER",
    "BreakerOpenError",
    "FlowGate",
    "FlowRegistry",
    "RateLimitedError",
    "breaker_event",
    "republish_snoozed",
]


class BreakerOpenError(Exception):
    """A task gave up waiting on an open circuit breaker (past snooze.deadline or snooze.max)."""


class RateLimitedError(Exception):
    """A task gave up waiting for a token of its shared rate limit (past snooze.deadline or snooze.max)."""


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def breaker_event(state: BreakerState, how: str) -> None:
    """Log one breaker state change (and send it to OTel/Sentry when installed)."""
    values = {
        "breaker": state.name,
        "state": state.state,
        "how": how,  # auto (the failure rate or a probe) | forced (an operator)
        "failure_rate": None if state.failure_rate is None else round(state.failure_rate, 4),
        "open_for_s": round(state.open_remaining_s, 3) if state.state == "open" else None,
        "since": state.since,
    }
    method = logger.warning if state.state == "open" else logger.info
    method("breaker_state_changed", **values)
    record_flow_event(values)


def breaker_unavailable(name: str, exc: BaseException) -> None:
    logger.error("breaker_store_unavailable", breaker=name, error=str(exc), effect="calls are let through")


def limit_unavailable(name: str, exc: BaseException) -> None:
    logger.error("limit_store_unavailable", limit=name, error=str(exc), effect="calls are let through")


def snooze_state(request: Any) -> Mapping[str, Any]:
    headers = getattr(request, "headers", None)
    value = headers.get(SNOOZE_HEADER) if headers else None
    return value if isinstance(value, Mapping) else {}


def republish_snoozed(
    task: Task, request: Any, args: Sequence[Any], kwargs: Mapping[str, Any], countdown_s: float, state: dict[str, Any]
) -> None:
    """Publish the message being run again after ``countdown_s``: same task id, retry number, canvas
    (chain, links, errbacks, chord), time limits, priority and queue, with ``state`` in its snooze header.

    This is the one function that publishes snoozes, so a delayed-delivery transport can take them over.
    """
    headers = headers_to_copy(request)
    headers[SNOOZE_HEADER] = state
    signature = task.signature_from_request(
        request, list(args), dict(kwargs), countdown=countdown_s, retries=int(request.retries or 0), headers=headers
    )
    signature.apply_async()


class FlowGate:
    """A task's breaker and limit and its snooze budget, compiled at boot."""

    def __init__(
        self,
        runtime: TaskRuntime,
        breaker: Breaker | None,
        limit: Limit | None,
        counted_on: Sequence[str],
        never: Sequence[str],
        groups: Mapping[str, list[str]],
    ) -> None:
        self.runtime = runtime
        self.name = runtime.name
        self.breaker = breaker
        self.limit = limit
        self.snooze: SnoozePolicy = runtime.policy.snooze
        self.deadline_s = snooze_deadline(runtime.policy)
        self._on = tuple(import_exception(p) for p in expand_refs(counted_on, groups))
        self._never = tuple(import_exception(p) for p in expand_refs(never, groups))
        self._counts: dict[type[BaseException], bool] = {}

    # -- the wrapper ---------------------------------------------------------------------------

    def wrap(self, task: Task, inner: Callable[..., Any]) -> Callable[..., Any]:
        """The body behind the gate; a closed breaker costs a clock read per call."""
        breaker, limit, before, failed = self.breaker, self.limit, self.before, self.failed

        def run(*args: Any, **kwargs: Any) -> Any:
            admission = breaker.admit() if breaker is not None else None
            if admission is not None or limit is not None:
                try:
                    admission = before(task, admission, args, kwargs)
                except _Return as done:
                    return done.value
            try:
                result = inner(*args, **kwargs)
            except TaskPredicate:
                if admission is PROBE and breaker is not None:
                    breaker.probe_done(None)
                raise
            except Exception as exc:
                failed(admission, exc)
                raise
            if breaker is not None:
                if admission is None:
                    breaker.succeeded()
                else:
                    breaker.probe_done(True)
            return result

        return run

    def counts(self, exc_type: type[BaseException]) -> bool:
        """Whether the breaker counts this failure: its ``on`` classes (default the task's retry.on) by MRO,
        where the task's retry.never wins at equal distance."""
        found = self._counts.get(exc_type)
        if found is None:
            found = False
            for klass in exc_type.__mro__:
                if klass in self._never:
                    break
                if klass in self._on:
                    found = True
                    break
            self._counts[exc_type] = found
        return found

    def failed(self, admission: float | str | None, exc: Exception) -> None:
        breaker = self.breaker
        if breaker is None:
            return
        counted = self.counts(type(exc))
        if admission is PROBE:
            breaker.probe_done(False if counted else None)
        elif counted:
            breaker.failed()

    # -- before the body -------------------------------------------------------------------------

    def before(self, task: Task, admission: float | str | None, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Snooze (raises ``Ignore``), give up (raises ``Reject`` / ``_Return``), or return the admission."""
        request = task.request
        if request.called_directly:  # no message to publish again: a direct call fails fast on an open breaker
            if isinstance(admission, float):
                msg = f"breaker '{self.breaker.name if self.breaker else ''}' is open"
                raise BreakerOpenError(msg)
            return admission
        state = snooze_state(request)
        if isinstance(admission, float):
            base = max(admission, MIN_SNOOZE_S)
            countdown = base + random.uniform(0, base * JITTER_SHARE)
            self._snooze(task, request, args, kwargs, countdown, "breaker_open", state)
        if self.limit is not None:
            wait, granted = self.limit.take(LIMIT_WAIT_IN_PLACE_S)
            if granted:
                if wait > 0:
                    time.sleep(wait)  # the token is reserved and near: wait for it here
                return admission
            # The next token is further away: snooze about that long (no token is held meanwhile, so
            # snoozed messages coming back together still go out at the limit's rate).
            if admission is PROBE and self.breaker is not None:
                self.breaker.probe_done(None)
            countdown = wait + random.uniform(0, wait * JITTER_SHARE)
            self._snooze(task, request, args, kwargs, countdown, "rate_limited", state)
        return admission

    def _snooze(
        self,
        task: Task,
        request: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        countdown_s: float,
        reason: str,
        state: Mapping[str, Any],
    ) -> None:
        countdown_s = min(countdown_s, MAX_SNOOZE_S)
        now = time.time()
        first = float(state.get("t0") or now)
        count = int(state.get("n") or 0)
        if self.snooze.max is not None and count >= self.snooze.max:
            self._give_up(task, request, args, kwargs, reason, state, "snooze.max")
        if now + countdown_s - first > self.deadline_s:
            self._give_up(task, request, args, kwargs, reason, state, "snooze.deadline")
        decision = self._decision(
            "snooze", request, countdown_s, reason, "breaker" if reason == "breaker_open" else "limit"
        )
        logger.info(
            "policy_snooze",
            decision="snooze",
            task=self.name,
            task_id=request.id,
            snoozes=count + 1,
            countdown=round(countdown_s, 3),
            reason=reason,
            breaker=self.breaker.name if self.breaker is not None else None,
            limit=self.limit.name if self.limit is not None else None,
            policy_source=decision.policy_source,
        )
        record_decision(decision, None)
        try:
            republish_snoozed(task, request, args, kwargs, countdown_s, {"n": count + 1, "t0": first})
        except Exception as exc:  # the broker is gone: keep the message rather than lose it
            logger.error("snooze_publish_failed", task=self.name, task_id=request.id, error=str(exc))
            if task.acks_late:
                raise Reject(f"snooze could not be published: {exc}", requeue=True) from exc
            return  # early ack: the message is gone from the broker; run the body rather than drop the task
        raise Ignore()

    def _give_up(
        self,
        task: Task,
        request: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        reason: str,
        state: Mapping[str, Any],
        field: str,
    ) -> None:
        count = int(state.get("n") or 0)
        first = float(state.get("t0") or time.time())
        waited = time.time() - first
        if reason == "breaker_open":
            exc: Exception = BreakerOpenError(
                f"breaker '{self.breaker.name if self.breaker else ''}' stayed open: snoozed {count} times over "
                f"{waited:.1f}s ({field})"
            )
        else:
            exc = RateLimitedError(
                f"limit '{self.limit.name if self.limit else ''}' had no token in time: snoozed {count} times over "
                f"{waited:.1f}s ({field})"
            )
        runtime = self.runtime
        runtime.fail_finally(
            request,
            exc,
            args,
            kwargs,
            int(request.retries or 0) + 1,
            None,
            reason,
            source_path=field,
            republish_with=None if task.acks_late else task,
        )
        if runtime.return_error:
            raise _Return({"ok": False, "error": {"type": type(exc).__name__, "message": str(exc), "reason": reason}})
        rejected = Reject(str(exc), requeue=False)
        if not _CELERY_STORES_REJECTED_FAILURE:
            store_rejected_failure(task, request, rejected, args, kwargs)
        raise rejected

    def _decision(self, action: str, request: Any, countdown_s: float | None, reason: str, path: str) -> Decision:
        error = BreakerOpenError if reason == "breaker_open" else RateLimitedError
        return Decision(
            action=action,
            task=self.name,
            task_id=getattr(request, "id", None),
            attempt=int(request.retries or 0) + 1,
            max_retries=self.snooze.max,
            countdown=countdown_s,
            exc_type=f"{error.__module__}.{error.__qualname__}",
            reason=reason,
            policy_source=str(self.runtime.resolved.source_of(path)),
        )


class FlowRegistry:
    """The app's breakers and limits: one :class:`Breaker` / :class:`Limit` per name per process, so every
    task naming a breaker shares its cache, all on one Redis client."""

    def __init__(self, policy: Policy, broker_url: str | None) -> None:
        self.policy = policy
        document = policy.document
        settings = document.flow_store
        self.url = flow_store_url(policy, broker_url)
        self.prefix = settings.prefix
        self.cache_for_s = settings.cache_for
        self._client: Any = None
        self.breakers: dict[str, Breaker] = {}
        self.limits: dict[str, Limit] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            if self.url is None:
                where = self.policy.location(("flow_store",)) or self.policy.files[0]
                msg = (
                    "breakers and limits keep their state in Redis, but no Redis is configured and the broker is not "
                    f"Redis; set flow_store.url or dead_letter_store.url ({where})"
                )
                raise PolicyError(msg)
            try:
                self._client = client_from_url(self.url, socket_connect_timeout=1.0, socket_timeout=2.0)
            except (RedisUrlError, redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                where = self.policy.location(("flow_store", "url")) or self.policy.files[0]
                msg = f"flow_store {safe_url(self.url)}: {exc} ({where})"
                raise PolicyError(msg) from exc
        return self._client

    def breaker(self, name: str) -> Breaker:
        found = self.breakers.get(name)
        if found is None:
            settings = self.policy.document.breakers[name]
            found = Breaker(
                name, settings, self.client, self.prefix, self.cache_for_s, breaker_event, breaker_unavailable
            )
            self.breakers[name] = found
        return found

    def limit(self, name: str) -> Limit:
        found = self.limits.get(name)
        if found is None:
            found = Limit(name, self.policy.document.limits[name], self.client, self.prefix, limit_unavailable)
            self.limits[name] = found
        return found

    def gate_for(self, runtime: TaskRuntime) -> FlowGate | None:
        """The task's gate, or None when it names neither a breaker nor a limit; PolicyError for an unknown name."""
        policy = runtime.policy
        if policy.breaker is None and policy.limit is None:
            return None
        document = self.policy.document
        for field, name, known in (
            ("breaker", policy.breaker, document.breakers),
            ("limit", policy.limit, document.limits),
        ):
            if name is not None and name not in known:
                choices = ", ".join(sorted(known)) or f"none: the file has no '{field}s' block"
                where = runtime.resolved.source_of(field)
                msg = f"task '{runtime.name}': unknown {field} '{name}' (known: {choices}) ({where})"
                raise PolicyError(msg)
        breaker = self.breaker(policy.breaker) if policy.breaker is not None else None
        counted: Sequence[str] = policy.retry.on
        if breaker is not None and breaker.settings.on is not None:
            counted = breaker.settings.on
        try:
            return FlowGate(
                runtime,
                breaker,
                self.limit(policy.limit) if policy.limit else None,
                counted,
                policy.retry.never,
                runtime.resolved.groups,
            )
        except (ImportError, AttributeError, TypeError) as exc:
            msg = f"task '{runtime.name}': {exc} ({runtime.resolved.source_of('breaker')})"
            raise PolicyError(msg) from exc


def flow_store_url(policy: Policy, broker_url: str | None) -> str | None:
    """flow_store.url, else the dead-letter store's Redis URL, else the broker's when it is Redis."""
    document = policy.document
    return document.flow_store.url or store_url_for(document.dead_letter_store.url, broker_url)
