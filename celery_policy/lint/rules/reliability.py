"""CP2xx reliability warnings: settings that work but fail badly under load, outages or crashes.

The idempotency key check (CP207) is in :mod:`.idempotency`, the quorum queue
delivery limit (CP209) with the other RabbitMQ queue rules in :mod:`.amqp`.
"""

from __future__ import annotations

from collections.abc import Iterator

from celery_policy._yaml import KeyPath, render_path
from celery_policy.backoff import longest_delay
from celery_policy.budgets import Budget, budgets
from celery_policy.delivery import REDIS_SCHEMES, reliable_fetch_on
from celery_policy.durations import format_duration
from celery_policy.errors import Diagnostic
from celery_policy.lint.context import Layer, LintContext
from celery_policy.lint.registry import rule
from celery_policy.queues import store_backend

CATCH_ALL = ("builtins.Exception", "builtins.BaseException")
CELERY_PREFETCH_DEFAULT = 4

_SOFT = ("timeout", "soft")
_HARD = ("timeout", "hard")


def _d(seconds: float) -> str:
    return format_duration(seconds)


def _rule_path(budget: Budget, layer: Layer) -> KeyPath:
    """The key path of a budget's `rules` entry in ``layer``."""
    return (*layer.prefix, "retry", "rules", budget.rule_index or 0)


@rule("CP201", "unbounded-retries", severity="warning")
def unbounded_retries(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when retries have no cap: `max_retries: null` and no `deadline`.

    Why: a permanently failing task retries forever, never reaches the dead
    letters and keeps a worker slot busy.

    Example:
        bad:  retry: {on: [transient], max_retries: null}
        good: retry: {on: [transient], max_retries: null, deadline: 1h}
    """
    for view in ctx.views():
        retry = view.policy.retry
        if retry.deadline is not None:
            continue
        uncapped = [b for b in budgets(retry) if b.retries is None]
        if not uncapped:
            continue
        layer, path = view.blame(("retry", "max_retries"), ("retry", "unknown_max_retries"), ("retry", "rules"))
        if all(b.rule_index is not None for b in uncapped):  # only rules that set `max_retries: null` themselves
            path = _rule_path(uncapped[0], view.blame(("retry", "rules"))[0])
        names = ", ".join(b.label for b in uncapped)
        message = f"retries without a cap ({names}): max_retries is null and no deadline is set"
        hint = "set retry.max_retries or a retry.deadline such as 1h so a permanent failure ends in the dead letters"
        yield Diagnostic("CP201", message, ctx.key_locate(path), hint, path=render_path((*layer.prefix, "retry")))


@rule("CP202", "retry-without-backoff", severity="warning")
def retry_without_backoff(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when retries wait no time (`backoff.initial: 0`) or a fixed time in
    lockstep (`factor: 1` with `jitter: none`).

    Why: an outage makes every failed task retry at once, again and again (a
    thundering herd against the service that is already down).

    Example:
        bad:  retry: {on: [transient], backoff: {initial: 5s, factor: 1, jitter: none}}
        good: retry: {on: [transient], backoff: {initial: 5s, factor: 2, jitter: full}}
    """
    for view in ctx.views():
        for budget in budgets(view.policy.retry):
            if budget.delay_from is not None:
                continue
            backoff = budget.backoff
            if backoff.initial == 0:
                message = f"{budget.label} retries without delay: backoff.initial is 0"
                field = "initial"
            elif backoff.factor == 1 and backoff.jitter == "none":
                every = _d(backoff.initial)
                message = f"{budget.label} retries every {every} in lockstep: backoff.factor 1, jitter none"
                field = "factor"
            else:
                continue
            hint = "use exponential backoff with jitter, e.g. backoff: {initial: 1s, factor: 2, max: 5m, jitter: full}"
            if budget.rule_index is not None:
                path = _rule_path(budget, view.blame(("retry", "rules"))[0])
                yield Diagnostic("CP202", message, ctx.key_locate(path), hint, path=render_path(path))
                continue
            layer, key = view.blame(("retry", "backoff", field), ("retry", "backoff"), ("retry", "on"))
            yield Diagnostic(
                "CP202", message, ctx.key_locate(key), hint, path=render_path((*layer.prefix, "retry", "backoff"))
            )


@rule("CP203", "catch-all-retry", severity="warning")
def catch_all_retry(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when `retry.on` (or a `rules` entry) lists `Exception` or `BaseException`,
    directly or through a group.

    Why: programming errors (TypeError, KeyError) are retried until the budget
    runs out instead of failing at once, and with Celery's own autoretry a
    catch-all also retries `Reject` and `SoftTimeLimitExceeded`.

    Example:
        bad:  retry: {on: [builtins.Exception]}
        good: retry: {on: [builtins.TimeoutError, builtins.ConnectionError]}
    """
    for view in ctx.views():
        retry = view.policy.retry
        lists: list[tuple[str, tuple[str, ...], int | None]] = [("retry.on", ctx.expand(retry.on), None)]
        for number, retry_rule in enumerate(retry.rules):
            lists.append((f"retry.rules[{number}].on", ctx.expand(retry_rule.on), number))
        for label, refs, index in lists:
            caught = [ref for ref in refs if ref in CATCH_ALL]
            if not caught:
                continue
            if index is None:
                _, path = view.blame(("retry", "on"))
            else:
                path = (*view.blame(("retry", "rules"))[0].prefix, "retry", "rules", index, "on")
            message = f"{label} retries {caught[0].removeprefix('builtins.')}: every error, bugs included, is retried"
            hint = "list the transient errors you expect (timeouts, connection errors); let bugs fail fast"
            yield Diagnostic("CP203", message, ctx.key_locate(path), hint, path=render_path(path))


def _prefetch(ctx: LintContext) -> tuple[int, str]:
    configured = ctx.document.worker.prefetch_multiplier
    if configured is not None:
        return configured, ""
    if ctx.app is not None:
        return ctx.app.prefetch_multiplier, " (the app's worker_prefetch_multiplier)"
    return CELERY_PREFETCH_DEFAULT, " (Celery's default)"


@rule("CP204", "late-ack-prefetch", severity="warning")
def late_ack_prefetch(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns about `ack.late: true` while `worker.prefetch_multiplier` is not 1.

    Why: each worker process reserves several unacknowledged messages. Behind
    a long task they wait, and when the worker dies they are all redelivered
    with it, which counts against `max_redeliveries` of tasks that never ran.

    Example:
        bad:  defaults: {ack: {late: true}}                       (prefetch stays at 4)
        good: defaults: {ack: {late: true}}, worker: {prefetch_multiplier: 1}
    """
    prefetch, origin = _prefetch(ctx)
    if prefetch == 1:
        return
    for view in ctx.views():
        if not view.policy.ack.late:
            continue
        layer, path = view.blame(("ack", "late"))
        shown = "0 (unlimited)" if prefetch == 0 else str(prefetch)
        message = f"late ack with worker.prefetch_multiplier {shown}{origin}"
        hint = "set worker.prefetch_multiplier: 1 so a worker reserves only the message it runs"
        yield Diagnostic("CP204", message, ctx.key_locate(path), hint, path=render_path((*layer.prefix, "ack")))


def _visibility(ctx: LintContext) -> tuple[float, str] | None:
    """The visibility timeout that applies, or None when the broker has none (AMQP, memory)."""
    configured = ctx.document.worker.visibility_timeout
    if ctx.app is not None and ctx.app.broker_scheme not in {"redis", "sqs"}:
        return None
    if configured is not None:
        return configured, "worker.visibility_timeout"
    if ctx.app is not None and ctx.app.visibility_timeout_s is not None:
        explicit = "visibility_timeout" in ctx.app.broker_transport_options
        return (
            ctx.app.visibility_timeout_s,
            "the app's broker_transport_options" if explicit else f"the {ctx.app.broker_scheme} default",
        )
    return 3600.0, "Celery's Redis default"


@rule("CP205", "visibility-timeout", severity="warning")
def visibility_timeout(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when a retry delay, or a late-acked task's hard timeout, can reach the
    broker's visibility timeout.

    Applies to Redis and SQS brokers (and when no `--app` tells the broker).
    The visibility timeout is `worker.visibility_timeout`, else the app's
    `broker_transport_options`, else 1h (Redis). Silent on Redis when reliable
    fetch is on (`worker.reliable_fetch`, by default with any late ack): its
    leases keep a live worker's messages from the visibility timeout, and
    delayed delivery keeps countdown retries in the broker.

    Why: a worker holds a countdown message unacknowledged until it is due; on
    Redis/SQS a message unacknowledged for longer than the visibility timeout
    is delivered again, and the task runs twice.

    Example:
        bad:  retry: {on: [transient], backoff: {max: 2h}}           (visibility timeout 1h)
        good: retry: {on: [transient], backoff: {max: 30m}}, or worker: {reliable_fetch: true} on Redis
    """
    found = _visibility(ctx)
    if found is None:
        return
    scheme = ctx.app.broker_scheme if ctx.app is not None else None
    if reliable_fetch_on(ctx.document, scheme):
        return  # leases: a live worker's messages are never restored by the visibility timeout
    limit, origin = found
    where = f"visibility timeout {_d(limit)} ({origin})"
    hint = "raise worker.visibility_timeout above the longest delay and hard timeout, or lower them"
    if scheme is None or scheme in REDIS_SCHEMES:
        where += "; reliable fetch is off, so nothing leases the message"
        hint = (
            "on Redis set worker.reliable_fetch: true (leases; countdown retries then wait in the broker with "
            "worker.delayed_delivery), or " + hint
        )
    for view in ctx.views():
        for budget in budgets(view.policy.retry):
            worst = longest_delay(budget.backoff, budget.retries, budget.delay_from)
            if worst < limit:
                continue
            if budget.rule_index is not None:
                path = _rule_path(budget, view.blame(("retry", "rules"))[0])
            elif view.owner(("retry", "backoff")) < 0:  # built-in backoff: the visibility timeout is what is short
                path = ("worker", "visibility_timeout")
            else:
                _, path = view.blame(("retry", "backoff", "max"), ("retry", "backoff"))
            message = f"{budget.label} can wait {_d(worst)} before a retry, not below the broker's {where}"
            yield Diagnostic("CP205", message, ctx.key_locate(path), hint, path=render_path(path))
        policy = view.policy
        hard = policy.timeout.hard if policy.timeout.hard is not None else policy.timeout.soft
        if policy.ack.late and hard is not None and hard >= limit:
            _, path = view.blame(_HARD if policy.timeout.hard is not None else _SOFT, ("ack", "late"))
            message = f"a late-acked task may run {_d(hard)}, not below the broker's {where}"
            yield Diagnostic("CP205", message, ctx.key_locate(path), hint, path=render_path(path))


@rule("CP206", "no-time-limit", severity="warning")
def no_time_limit(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when tasks have neither a soft nor a hard time limit.

    Checked for `defaults` (which every task without its own timeout uses) and
    for any pattern or task that clears both limits.

    Why: a task stuck on a network call holds its worker slot forever; with
    late ack it also blocks the message.

    Example:
        bad:  defaults: {retry: {max_retries: 3}}
        good: defaults: {retry: {max_retries: 3}, timeout: {soft: 5m, hard: 5m30s}}
    """
    for view in ctx.views():
        timeout = view.policy.timeout
        if timeout.soft is not None or timeout.hard is not None:
            continue
        if view.kind != "defaults" and not (view.sets(_SOFT) or view.sets(_HARD)):
            continue
        layer, path = view.blame(_SOFT, _HARD)
        if view.kind == "defaults" and view.owner(_HARD) < 0 and view.owner(_SOFT) < 0:
            path = ("defaults",) if "defaults" in ctx.document.model_fields_set else ()
            subject = "tasks without a timeout of their own"
        else:
            subject = view.describe()
        message = f"no time limit: {subject} have neither timeout.soft nor timeout.hard"
        if view.kind != "defaults":
            message = f"no time limit: {subject} has neither timeout.soft nor timeout.hard"
        hint = "set a hard limit and a slightly shorter soft one, e.g. timeout: {soft: 5m, hard: 5m30s}"
        yield Diagnostic("CP206", message, ctx.key_locate(path), hint, path=render_path((*layer.prefix, "timeout")))


@rule("CP208", "dead-letter-store", severity="warning", needs_app=True)
def dead_letter_store(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when dead letters are enabled but no store is reachable: no
    `dead_letter_store.url` and the app's broker is not Redis.

    Needs `--app` (to know the broker); quiet without it.

    Why: the store is the broker itself when it is Redis or (with `backend: auto`
    or `amqp`) RabbitMQ's dead queues; with `backend: redis`, no url and
    another broker, dead-letter records have nowhere to go.

    Example:
        bad:  defaults: {dead_letter: {enabled: true}}, dead_letter_store: {backend: redis}   (broker amqp://)
        good: defaults: {dead_letter: {enabled: true}}, dead_letter_store: {url: "redis://cache:6379/1"}
    """
    if ctx.app is None:
        return
    if store_backend(ctx.document.dead_letter_store, ctx.app.broker_url) is not None:
        return  # a Redis store (url or Redis broker) or the AMQP broker's own dead queues
    for view in ctx.views():
        if not view.policy.dead_letter.enabled:
            continue
        _layer, path = view.blame(("dead_letter", "enabled"))
        scheme = ctx.app.broker_scheme
        message = (
            f"dead letters are enabled but no store can be derived: no dead_letter_store.url and the broker is {scheme}"
        )
        hint = "set dead_letter_store.url to a Redis URL (the broker only serves as the store when it is Redis)"
        yield ctx.diagnostic("CP208", message, path, hint)


# Reliability (celery_policy/transport/): late ack on Redis without reliable fetch
@rule("CP210", "late-ack-without-reliable-fetch", severity="warning")
def late_ack_without_reliable_fetch(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when tasks ack late on a Redis broker while `worker.reliable_fetch` is false.

    Applies to Redis brokers (and when no `--app` tells the broker).

    Why: kombu's Redis transport takes a message with BRPOP and records it
    as unacknowledged only afterwards; a worker's main process killed in
    between loses the message, whatever `ack.late` and
    `reject_on_worker_lost` promise. Reliable fetch takes and records it in
    one atomic step and gives a dead worker's messages back.

    Example:
        bad:  defaults: {ack: {late: true}}, worker: {reliable_fetch: false}
        good: defaults: {ack: {late: true}}   (reliable fetch is on by default with late ack on Redis)
    """
    if ctx.document.worker.reliable_fetch is not False:
        return
    if ctx.app is not None and ctx.app.broker_scheme != "redis":
        return
    late = [view for view in ctx.views() if view.policy.ack.late]
    if not late:
        return
    path = ("worker", "reliable_fetch")
    message = f"{len(late)} task polic{'y acks' if len(late) == 1 else 'ies ack'} late on Redis without reliable fetch"
    hint = "remove worker.reliable_fetch: false (a killed worker loses a message between BRPOP and its unacked record)"
    yield Diagnostic("CP210", message, ctx.key_locate(path), hint, path=render_path(path))
