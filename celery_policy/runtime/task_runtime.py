"""TaskRuntime: the policy of one task, compiled once at boot, and what it decides when the task fails.

A failure ends in one of two ways: a retry (:meth:`TaskRuntime.handle_failure`)
or a final failure. Every final failure, whether the body gave up, a hard time
limit struck, or the redelivery cap was passed, goes through one sequence,
:meth:`TaskRuntime.fail_finally`: decision, dead letter, log event, hooks.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, TaskPredicate

from celery_policy.backoff import draw_delay
from celery_policy.deadletter.store import DeadLetterStore
from celery_policy.errors import PolicyError
from celery_policy.references import import_object
from celery_policy.resolve import ResolvedPolicy
from celery_policy.runtime.amqp_delay import retry_options
from celery_policy.runtime.attributes import celery_attributes
from celery_policy.runtime.classify import Action, Classifier, Outcome
from celery_policy.runtime.dead_letter import DeadLetterWriter, RedeliveryCounter, store_rejected_failure
from celery_policy.runtime.decision import Decision
from celery_policy.runtime.events import ArgRenderer, call_hook, log_decision, logger, mask_exception
from celery_policy.runtime.headers import HEADER, headers_to_copy, policy_state
from celery_policy.runtime.idempotency import Entry, IdempotencyGuard, IdempotencyKeyError
from celery_policy.support import celery_stores_rejected_failure
from celery_policy.transport.delayed import ack_tag_of, acking

if TYPE_CHECKING:
    from celery_policy.runtime.flow import FlowGate

RERAISE = object()  # handle_failure's answer: re-raise the original exception where it was caught
_CELERY_STORES_REJECTED_FAILURE = celery_stores_rejected_failure()

__all__ = ["RERAISE", "TaskRuntime"]

# What one compiled TaskPolicy shares between the tasks it applies to: classifier, hooks, attribute cache.
Compiled = tuple[Classifier, dict[str, Any], dict[bool, dict[str, Any]]]


class TaskRuntime:
    """The compiled policy of one task."""

    def __init__(
        self,
        resolved: ResolvedPolicy,
        run: Callable[..., Any] | None = None,
        shared: dict[int, Compiled] | None = None,
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
        self.self_retry = policy.retry.self_retry == "policy"
        self.return_error = policy.result.on_failure == "return_error"
        self.dead_letter = policy.dead_letter.enabled
        self.args = ArgRenderer(policy.log, lambda: _param_names(run))
        self.max_redeliveries = policy.ack.max_redeliveries if policy.ack.late else None
        self.dead_letters = DeadLetterWriter(self.name, self.args)  # its store is set by bind_redis()
        self.redeliveries: RedeliveryCounter | None = None  # set by bind_redis()
        self.idempotency: IdempotencyGuard | None = None  # set by bind_redis()
        self.flow: FlowGate | None = None  # breaker / limit before the body; set by bind_flow()
        self.amqp_delay = False  # RabbitMQ delay path (runtime.amqp_delay), set at install
        self.soft_limit_s = policy.timeout.soft  # backstopped in prefork pool processes (runtime/soft_limit.py)
        self.needs_wrapper = (
            self.classifier.retries_anything
            or self.return_error
            or self.dead_letter
            or self.max_redeliveries is not None
            or policy.idempotency is not None
            or any(self.hooks.values())
        )

    def own_retry(self, request: Any, exc: BaseException | None) -> tuple[float, int | None]:
        """Countdown and cap for a task's own ``self.retry()`` without countdown (``retry.self_retry: policy``).

        The exception is classified as the policy would: a matching ``rules`` entry
        (or ``on``) gives its backoff and budget; anything else the task-level
        ``retry.backoff`` and ``retry.max_retries``. The delay follows the
        schedule for ``request.retries`` retries made so far.
        """
        retry = self.policy.retry
        backoff, cap = retry.backoff, retry.max_retries
        if exc is not None:
            outcome = self.classifier.classify(type(exc))
            if outcome.action is Action.RETRY:
                backoff, cap = outcome.backoff, outcome.max_retries
        return draw_delay(backoff, int(request.retries or 0)), cap

    @property
    def wraps_run(self) -> bool:
        """Whether the task's ``run`` gets the policy wrapper (failure handling, or only the soft-limit backstop)."""
        return self.needs_wrapper or self.soft_limit_s is not None

    @property
    def needs_redis(self) -> bool:
        return self.dead_letter or self.max_redeliveries is not None or self.policy.idempotency is not None

    def bind_redis(self, store: DeadLetterStore | None, client: Any) -> None:
        """Give the runtime its Redis: the dead-letter store and a client for counters and keys."""
        self.dead_letters.store = store if self.dead_letter or self.max_redeliveries is not None else None
        self.redeliveries = RedeliveryCounter(self.name, client) if client is not None else None
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

    def bind_flow(self, gate: FlowGate) -> None:
        """Put the task's breaker and limit (runtime/flow.py) in front of its body."""
        self.flow = gate
        self.needs_wrapper = True

    # -- class attributes Celery reads ---------------------------------------------------------

    def task_attributes(self, has_split_acks: bool) -> dict[str, Any]:
        """Celery task attributes for the fields the policy sets (where it is silent, Celery's own values stand)."""
        cached = self._attrs.get(has_split_acks)
        if cached is None:
            cached = self._attrs[has_split_acks] = celery_attributes(self.resolved, has_split_acks)
        return dict(cached)

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
            mask_exception(exc, self.args.secrets(args, kwargs))
        state = policy_state(request)
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
                    decision = self._decision("retry", request, attempt, outcome, countdown, exc, None)
                    log_decision(decision, self.args.render(args, kwargs), exc, self.args.secrets(args, kwargs))
                    call_hook(self.hooks["on_retry"], "on_retry", request, exc, decision)
                    headers = headers_to_copy(request)
                    headers[HEADER] = {"n": counters, "t0": first}
                    # throw=False: the wrapper raises it, so the traceback Celery renders (billiard's
                    # ExceptionInfo costs ~0.1 ms per frame on Python 3.11) stays as short as autoretry's.
                    try:
                        # delayed delivery (Redis): the retry goes to the broker's delayed set, acking this
                        # message in the same script; elsewhere acking() changes nothing
                        # RabbitMQ with delayed delivery: through a TTL bucket queue, no eta held by a consumer
                        delay = retry_options(request, countdown) if self.amqp_delay else None
                        with acking(ack_tag_of(task)):
                            return task.retry(
                                exc=exc,
                                max_retries=attempt,
                                headers=headers,
                                throw=False,
                                **(delay or {"countdown": countdown}),
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
                else:
                    reason = "deadline"
            else:
                reason = outcome.reason
        else:
            reason = outcome.reason
        # The body failed for the last time. With early ack the message is already gone from the
        # broker, so a store outage publishes it again.
        republish_with = None if task.acks_late else task
        self.fail_finally(request, exc, args, kwargs, attempt, outcome, reason, republish_with=republish_with)
        if self.return_error:
            return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc), "reason": reason}}
        return RERAISE

    def fail_finally(
        self,
        request: Any,
        exc: BaseException,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        attempt: int,
        outcome: Outcome | None,
        reason: str,
        *,
        dead_letter: bool | None = None,
        republish_with: Task | None = None,
        source_path: str | None = None,
        body_failed: bool = True,
        in_parent: bool = False,
    ) -> Decision:
        """The one final-failure sequence: decision, dead letter, log event, hooks.

        ``dead_letter`` defaults to the policy's ``dead_letter.enabled``. ``source_path``
        names the policy field behind a decision that no retry outcome explains.
        ``body_failed=False`` (the redelivery cap: the body never raised) skips the
        ``on_failure`` hook. A dead-letter write that publishes the message again raises
        ``Ignore`` and ends the sequence there, except ``in_parent`` (a hard time limit,
        handled in the worker's main process), where nothing is left to raise into.
        """
        if dead_letter is None:
            dead_letter = self.dead_letter
        action = "dead_letter" if dead_letter else "fail"
        decision = self._decision(action, request, attempt, outcome, None, exc, reason, source_path)
        rendered = self.args.render(args, kwargs)
        if dead_letter:
            try:
                self.dead_letters.write(
                    request, exc, args, kwargs, rendered, attempt, reason, decision, republish_with=republish_with
                )
            except Ignore:
                if not in_parent:
                    raise
        log_decision(decision, rendered, exc, self.args.secrets(args, kwargs))
        if body_failed:
            call_hook(self.hooks["on_failure"], "on_failure", request, exc, decision)
        if dead_letter:
            call_hook(self.hooks["on_dead_letter"], "on_dead_letter", request, exc, decision)
        return decision

    def time_limit_failed(
        self, task: Task, request: Any, exc: BaseException, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        """A hard time limit ended the task (reported in the worker's main process; Celery acked the message)."""
        self.fail_finally(
            request,
            exc,
            args,
            kwargs,
            int(request.retries or 0) + 1,
            None,
            "time_limit",
            dead_letter=self.dead_letter and self.policy.dead_letter.on_time_limit,
            republish_with=task,
            in_parent=True,
        )

    def time_limit_requeued(
        self, request: Any, exc: BaseException, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        """A hard time limit with the message put back (no final failure): the decision is only logged."""
        decision = self._decision("requeue", request, 1, None, None, exc, "time_limit")
        log_decision(decision, self.args.render(args, kwargs), exc)

    # -- guards before the body: redelivery cap and idempotency ---------------------------------------

    def check_redelivery(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Poison-pill cap: count broker redeliveries of this (task id, retry) and dead-letter past the cap.

        Only redelivered messages pay a Redis round trip; ``delivery_info['redelivered']`` is read,
        never the ``redelivered`` header, which leaks into retries.
        """
        request = task.request
        delivery = request.delivery_info or {}
        if not delivery.get("redelivered") or self.redeliveries is None:
            return
        count = self.redeliveries.count(request)
        if count is None:
            return
        assert self.max_redeliveries is not None
        if count <= self.max_redeliveries:
            return
        exc = RuntimeError(
            f"message redelivered {count} times after lost workers (max_redeliveries={self.max_redeliveries})"
        )
        attempt = int(request.retries or 0) + 1
        self.fail_finally(
            request,
            exc,
            args,
            kwargs,
            attempt,
            None,
            "redelivery_limit",
            dead_letter=True,
            source_path="ack.max_redeliveries",
            body_failed=False,
        )
        rejected = Reject(str(exc), requeue=False)
        if not _CELERY_STORES_REJECTED_FAILURE:
            store_rejected_failure(task, request, rejected, args, kwargs)
        raise rejected

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
        request: Any,
        attempt: int,
        outcome: Outcome | None,
        countdown: float | None,
        exc: BaseException,
        reason: str | None,
        source_path: str | None = None,
    ) -> Decision:
        path = outcome.source_path if outcome is not None else (source_path or "timeout.hard")
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
            rule=path,
        )


def _param_names(run: Callable[..., Any] | None) -> list[str]:
    if run is None:
        return []
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
