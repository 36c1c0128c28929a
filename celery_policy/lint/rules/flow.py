"""Flow control: breakers, limits and snoozes (CP130-CP132 errors, CP240-CP243 warnings)."""

from __future__ import annotations

from collections.abc import Iterator

from celery_policy._yaml import render_path
from celery_policy.durations import format_duration
from celery_policy.errors import Diagnostic, trim
from celery_policy.lint.context import LintContext, View
from celery_policy.lint.registry import rule
from celery_policy.loader import _did_you_mean


def _d(seconds: float) -> str:
    return format_duration(seconds)


@rule("CP130", "bad-rate", emitted_by="loader")
def bad_rate(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports a limit whose `rate` is not a count per period such as 40/s, 100/m or 5/10s.

    Why: the worker refuses to boot with a rate it cannot read.

    Example:
        bad:  limits: {payments_api: {rate: 40 per second}}
        good: limits: {payments_api: {rate: 40/s, burst: 5}}
    """
    yield from ()


def _unknown_names(ctx: LintContext, field: str, code: str) -> Iterator[Diagnostic]:
    known = ctx.document.breakers if field == "breaker" else ctx.document.limits
    block = f"{field}s"
    for layer in (ctx.defaults_layer(), *ctx.task_layers().values()):
        name = layer.leaves.get((field,))
        if name is None or name in known:
            continue
        path = (*layer.prefix, field)
        hint = _did_you_mean(str(name), known) or (
            f"known {block}: {', '.join(sorted(known))}" if known else f"define it in a top-level '{block}:' block"
        )
        yield ctx.diagnostic(code, f"unknown {field} '{trim(name)}'", path, hint)


@rule("CP131", "unknown-breaker")
def unknown_breaker(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports a task (or `defaults`, or a pattern) naming a breaker that `breakers` does not define.

    Why: the worker refuses to boot; a misspelt name would otherwise leave the
    dependency unprotected.

    Example:
        bad:  breakers: {payments: {}}, tasks: {shop.charge: {breaker: payment}}
        good: breakers: {payments: {}}, tasks: {shop.charge: {breaker: payments}}
    """
    yield from _unknown_names(ctx, "breaker", "CP131")


@rule("CP132", "unknown-limit")
def unknown_limit(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports a task (or `defaults`, or a pattern) naming a limit that `limits` does not define.

    Why: the worker refuses to boot; a misspelt name would otherwise send
    calls to the downstream without any limit.

    Example:
        bad:  limits: {payments_api: {rate: 40/s}}, tasks: {shop.sync: {limit: payments}}
        good: limits: {payments_api: {rate: 40/s}}, tasks: {shop.sync: {limit: payments_api}}
    """
    yield from _unknown_names(ctx, "limit", "CP132")


def _with_breaker(ctx: LintContext) -> Iterator[tuple[View, str]]:
    for view in ctx.views():
        name = view.policy.breaker
        if name is not None and name in ctx.document.breakers:
            yield view, name


@rule("CP240", "breaker-shorter-than-backoff", severity="warning")
def breaker_shorter_than_backoff(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when a breaker's `open_for` is shorter than the first retry delay of a task using it.

    Why: the failed calls come back after the breaker already half-opened, so
    their retries reach the failing dependency instead of being snoozed, and
    the breaker spares it almost nothing.

    Example:
        bad:  breakers: {payments: {open_for: 2s}}, defaults: {retry: {backoff: {initial: 10s}}}
        good: breakers: {payments: {open_for: 30s}}, defaults: {retry: {backoff: {initial: 10s}}}
    """
    for view, name in _with_breaker(ctx):
        retry = view.policy.retry
        if not retry.on:
            continue
        breaker = ctx.document.breakers[name]
        first = retry.backoff.initial
        if breaker.open_for >= first:
            continue
        path = ("breakers", name, "open_for")
        message = (
            f"breaker '{name}' stays open {_d(breaker.open_for)}, less than the first retry delay {_d(first)} "
            f"of {view.describe()}"
        )
        hint = f"set breakers.{name}.open_for to at least {_d(first)}, or shorten retry.backoff.initial"
        yield ctx.diagnostic("CP240", message, path if (*path,) in ctx.source else ("breakers", name), hint)


@rule("CP241", "snooze-beyond-retry-deadline", severity="warning")
def snooze_beyond_retry_deadline(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when a task may wait on its breaker or limit (`snooze.deadline`) longer than its
    whole retry budget (`retry.deadline`).

    Why: a task that waits that long is run after the time its owner said it
    was still worth doing.

    Example:
        bad:  tasks: {shop.charge: {breaker: payments, retry: {deadline: 10m}, snooze: {deadline: 1h}}}
        good: tasks: {shop.charge: {breaker: payments, retry: {deadline: 10m}, snooze: {deadline: 10m}}}
    """
    for view in ctx.views():
        policy = view.policy
        if policy.breaker is None and policy.limit is None:
            continue
        deadline = policy.retry.deadline
        if deadline is None or policy.snooze.deadline is None or policy.snooze.deadline <= deadline:
            continue
        _, path = view.blame(("snooze", "deadline"))
        message = (
            f"snooze.deadline {_d(policy.snooze.deadline)} is beyond retry.deadline {_d(deadline)} of {view.describe()}"
        )
        hint = f"set snooze: {{deadline: {_d(deadline)}}} or less (unset, it defaults to retry.deadline)"
        yield Diagnostic("CP241", message, ctx.key_locate(path), hint, path=render_path(path))


@rule("CP242", "breaker-counts-nothing", severity="warning")
def breaker_counts_nothing(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns when a task uses a breaker that counts no failure: the breaker sets no `on` and the
    task's `retry.on` is empty.

    Why: a breaker that counts nothing never opens.

    Example:
        bad:  breakers: {payments: {}}, tasks: {shop.charge: {breaker: payments}}
        good: breakers: {payments: {on: [transient]}}, tasks: {shop.charge: {breaker: payments}}
    """
    for view, name in _with_breaker(ctx):
        if ctx.document.breakers[name].on is not None or view.policy.retry.on:
            continue
        _, path = view.blame(("breaker",))
        message = f"breaker '{name}' counts no failure of {view.describe()}: it sets no 'on' and retry.on is empty"
        hint = f"list the failures that count in breakers.{name}.on, e.g. on: [transient]"
        yield Diagnostic("CP242", message, ctx.key_locate(path), hint, path=render_path(path))


@rule("CP243", "unused-flow-control", severity="warning")
def unused_flow_control(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: warns about a breaker or limit that no task, pattern or `defaults` names.

    Why: it protects nothing; usually a task's `breaker:` or `limit:` was
    forgotten or misspelt.

    Example:
        bad:  limits: {payments_api: {rate: 40/s}}   (and no task says limit: payments_api)
        good: limits: {payments_api: {rate: 40/s}}, tasks: {shop.sync: {limit: payments_api}}
    """
    layers = (ctx.defaults_layer(), *ctx.task_layers().values())
    for field, block in (("breaker", ctx.document.breakers), ("limit", ctx.document.limits)):
        used = {layer.leaves.get((field,)) for layer in layers}
        for name in block:
            if name in used:
                continue
            message = f"{field} '{name}' is not used by any task"
            hint = f"name it in a task, pattern or defaults: {field}: {name}"
            yield ctx.diagnostic("CP243", message, (f"{field}s", name), hint)
