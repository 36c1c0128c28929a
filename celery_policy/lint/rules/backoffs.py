"""CP120: backoff schedules that contradict themselves (a structural error, CP1xx)."""

from __future__ import annotations

from collections.abc import Iterator

from celery_policy._yaml import KeyPath, render_path
from celery_policy.budgets import rule_backoff
from celery_policy.durations import format_duration
from celery_policy.errors import Diagnostic
from celery_policy.lint.context import LintContext, View
from celery_policy.lint.registry import rule


def _d(seconds: float) -> str:
    return format_duration(seconds)


@rule("CP120", "backoff-initial-above-max")
def backoff_initial_above_max(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports a backoff whose `initial` delay is above its `max`.

    Checked for the effective backoff of every layer and of each `rules`
    entry (a rule's fields over the task's), so a task's `max: 30s` under a
    default `initial: 1m` is a finding too. An environment overlay that only
    lowers `max` (short delays in development) is not: capping every delay
    is what it means.

    Why: the delay is `min(max, initial * factor ** n)`, so every retry waits
    the cap and `initial` and `factor` do nothing. That is almost always a unit
    mistake such as `initial: 10m, max: 1m` (meant `10s` or `max: 1h`).

    Example:
        bad:  retry: {backoff: {initial: 10m, max: 1m}}
        good: retry: {backoff: {initial: 10s, max: 1m}}
    """
    for view in ctx.views():
        retry = view.policy.retry
        backoff = retry.backoff
        if backoff.initial > backoff.max and not ctx.overlay_lowers(
            view, ("retry", "backoff", "max"), ("retry", "backoff", "initial")
        ):
            layer, blamed = view.blame(("retry", "backoff", "initial"), ("retry", "backoff", "max"))
            places = {name: _place(ctx, view, ("retry", "backoff", name)) for name in ("initial", "max")}
            prefix = (*layer.prefix, "retry", "backoff")
            yield _initial_above_max(ctx, "retry.backoff", backoff.initial, backoff.max, places, blamed, prefix)
        for index, retry_rule in enumerate(retry.rules):
            own = retry_rule.backoff.model_fields_set if retry_rule.backoff is not None else set()
            if not own & {"initial", "max"}:
                continue  # a rule that sets neither inherits the task's backoff, reported above
            effective = rule_backoff(backoff, retry_rule)
            if effective.initial <= effective.max:
                continue
            prefix = (*view.blame(("retry", "rules"))[0].prefix, "retry", "rules", index, "backoff")
            places = {
                name: str(ctx.key_locate((*prefix, name)))
                if name in own
                else _place(ctx, view, ("retry", "backoff", name))
                for name in ("initial", "max")
            }
            blamed = (*prefix, "initial" if "initial" in own else "max")
            label = f"retry.rules[{index}].backoff"
            yield _initial_above_max(ctx, label, effective.initial, effective.max, places, blamed, prefix)


def _place(ctx: LintContext, view: View, relative: KeyPath) -> str:
    """Where the effective value of ``relative`` was written, or "built-in"."""
    index = view.owner(relative)
    if index < 0:
        return "built-in"
    return str(ctx.key_locate((*view.layers[index].prefix, *relative)))


def _initial_above_max(
    ctx: LintContext,
    label: str,
    initial: float,
    cap: float,
    places: dict[str, str],
    blamed: KeyPath,
    prefix: KeyPath,
) -> Diagnostic:
    message = f"{label}.initial {_d(initial)} is above {label}.max {_d(cap)}: every retry waits {_d(cap)}"
    hint = (
        f"initial {_d(initial)} ({places['initial']}) and max {_d(cap)} ({places['max']}): check the units "
        "(initial is the first delay, max the cap), e.g. initial: 10s with max: 10m"
    )
    return Diagnostic("CP120", message, ctx.key_locate(blamed), hint, path=render_path(prefix))
