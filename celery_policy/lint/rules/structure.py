"""CP1xx structure: findings that make the file invalid or its meaning ambiguous (errors).

Also documents the findings the loader emits while it reads and validates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from celery_policy._yaml import KeyPath, render_path
from celery_policy.durations import format_duration
from celery_policy.errors import Diagnostic, PolicyError, trim
from celery_policy.lint.context import LintContext
from celery_policy.lint.globs import candidate_pairs, common_match
from celery_policy.lint.registry import rule
from celery_policy.loader import RawPolicy
from celery_policy.patterns import Specificity, glob_problem, is_glob, specificity
from celery_policy.resolve import Policy

_SOFT = ("timeout", "soft")
_HARD = ("timeout", "hard")


def _d(seconds: float) -> str:
    return format_duration(seconds)


# --- findings the loader emits (documented and selectable here) ------------------------------


@rule("CP100", "yaml-syntax", emitted_by="loader")
def yaml_syntax(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports a file that cannot be read as one YAML document.

    That covers syntax errors, tabs used for indentation, binary or non-UTF-8
    files, files over the size limit, documents nested too deeply, several
    documents in one file and unsupported tags.

    Why: nothing else can be checked, and a worker would refuse to boot.

    Example:
        bad:  "defaults:\\n\\tretry: {max_retries: 3}"   (a tab indents the key)
        good: "defaults:\\n  retry: {max_retries: 3}"
    """
    yield from ()


@rule("CP101", "schema", emitted_by="loader")
def schema(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports values of the wrong type or out of range, missing keys and empty files.

    Why: a value the model rejects stops `install()` at worker boot.

    Example:
        bad:  retry: {max_retries: many}
        good: retry: {max_retries: 5}
    """
    yield from ()


@rule("CP102", "unknown-key", emitted_by="loader")
def unknown_key(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports keys the format does not define, with a "did you mean" hint.

    Why: a misspelt key (`max_retires`) would otherwise be ignored and leave
    the task on a default the author meant to change.

    Example:
        bad:  retry: {max_retires: 5}
        good: retry: {max_retries: 5}
    """
    yield from ()


@rule("CP104", "bad-duration", emitted_by="loader")
def bad_duration(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports durations that are not a non-negative number of seconds or a string like 30s, 5m, 1h30m.

    Why: a negative or unparsable duration has no meaning as a timeout or a delay.

    Example:
        bad:  timeout: {hard: -5m}
        good: timeout: {hard: 5m}
    """
    yield from ()


@rule("CP106", "unknown-group")
def unknown_group(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports a name in `on`, `never` or `rules` that is neither a group in `errors` nor a dotted path.

    Also reports a group that includes itself.

    Why: a misspelt group silently matches no exception, so nothing retries.

    Example:
        bad:  errors: {transient: [builtins.TimeoutError]}, retry: {on: [transiant]}
        good: errors: {transient: [builtins.TimeoutError]}, retry: {on: [transient]}
    """
    yield from (d for d in ctx.references() if d.code == "CP106")


@rule("CP107", "bad-exception-class")
def bad_exception_class(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports exception references that cannot be imported or are not exception classes.

    Classes import relative to the app's directory (`--app`) or the working directory.

    Why: a worker refuses to boot with a class it cannot import, and a
    non-exception can never be raised.

    Example:
        bad:  retry: {on: [requests.exceptions.Timeoutt, builtins.print]}
        good: retry: {on: [requests.exceptions.Timeout]}
    """
    yield from (d for d in ctx.references() if d.code == "CP107")


@rule("CP108", "duplicate-key", emitted_by="loader")
def duplicate_key(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports a key written twice in one mapping.

    Why: YAML keeps only the last value, so the first is silently lost.

    Example:
        bad:  tasks: {orders.charge: {...}, orders.charge: {...}}
        good: tasks: {orders.charge: {...}}   (one entry, merged by hand)
    """
    yield from ()


@rule("CP111", "unknown-environment", emitted_by="loader")
def unknown_environment(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports `--env` or `extends` naming an environment the file does not define.

    Why: a worker started with that environment would refuse to boot.

    Example:
        bad:  environments: {staging: {extends: prod}, production: {}}
        good: environments: {staging: {extends: production}, production: {}}
    """
    yield from ()


@rule("CP112", "environment-cycle", emitted_by="loader")
def environment_cycle(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports environments whose `extends` chain loops back on itself.

    Why: the overlays have no defined order, so no effective policy exists.

    Example:
        bad:  environments: {a: {extends: b}, b: {extends: a}}
        good: environments: {a: {extends: b}, b: {}}
    """
    yield from ()


@rule("CP116", "bad-hook")
def bad_hook(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports hooks (`on_retry`, `on_failure`, `on_dead_letter`) that cannot be imported
    or are not callable.

    Why: a worker refuses to boot with a hook it cannot resolve.

    Example:
        bad:  hooks: {on_dead_letter: proj.alerts.page_oncal}
        good: hooks: {on_dead_letter: proj.alerts.page_oncall}
    """
    yield from (d for d in ctx.references() if d.code == "CP116")


# --- CP1xx over the validated document ---------------------------------------------------------


@rule("CP103", "soft-not-below-hard")
def soft_not_below_hard(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports an effective soft time limit that is not below the hard one.

    Every layer is checked as it takes effect: `defaults`, each pattern over
    `defaults`, each task name over every layer that matches it. A pattern's
    `soft: 30m` under a default `hard: 5m30s` is a finding too.

    Why: the soft limit raises SoftTimeLimitExceeded so the task can clean up
    before the hard limit kills the process. If it is not shorter it never
    fires first, and Celery's `apply_async` raises ValueError when soft > hard.

    Example:
        bad:  timeout: {soft: 6m, hard: 5m}
        good: timeout: {soft: 5m, hard: 5m30s}
    """
    for view in ctx.views():
        soft, hard = view.policy.timeout.soft, view.policy.timeout.hard
        if soft is None or hard is None or soft < hard:
            continue
        layer, path = view.blame(_SOFT, _HARD)
        message = f"soft timeout {_d(soft)} is not below hard timeout {_d(hard)}"
        hint = "make the soft limit shorter than the hard one (e.g. hard = soft + 30s) so the task can clean up"
        other_index = view.owner(_HARD if path[-1] == "soft" else _SOFT)
        if other_index >= 0 and view.layers[other_index] is not layer:
            other = view.layers[other_index]
            which = "hard" if path[-1] == "soft" else "soft"
            where = ctx.key_locate((*other.prefix, "timeout", which))
            hint = f"the {which} timeout comes from {other.label} ({where}); " + hint
        yield Diagnostic("CP103", message, ctx.key_locate(path), hint, path=render_path((*layer.prefix, "timeout")))


@rule("CP105", "bad-glob")
def bad_glob(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports task names and patterns that can never match a task.

    Unclosed `[`, empty or reversed character classes, empty names and
    leading or trailing whitespace.

    Why: the entry silently applies to nothing and its tasks keep the defaults.

    Example:
        bad:  tasks: {"reports.[a-": {...}}
        good: tasks: {"reports.[a-z]*": {...}}
    """
    for name in ctx.document.tasks:
        problem = glob_problem(name)
        if problem is None:
            continue
        kind = "pattern" if is_glob(name) else "task name"
        hint = "fnmatch syntax: * any run, ? one character, [abc] / [a-z] / [!x] a class"
        yield ctx.diagnostic("CP105", f"{kind} '{trim(name)}' can never match: {problem}", ("tasks", name), hint)


@rule("CP109", "on-and-never")
def on_and_never(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports an exception class listed in both `retry.on` and `retry.never` (after expanding groups).

    Why: at equal distance `never` wins, so the `on` entry is dead and the
    author's intent is unclear.

    Example:
        bad:  retry: {on: [builtins.TimeoutError], never: [builtins.TimeoutError, builtins.ValueError]}
        good: retry: {on: [builtins.TimeoutError], never: [builtins.ValueError]}
    """
    for view in ctx.views():
        never = set(ctx.expand(view.policy.retry.never))
        both = [ref for ref in ctx.expand(view.policy.retry.on) if ref in never]
        if not both:
            continue
        layer, path = view.blame(("retry", "on"), ("retry", "never"))
        listed = ", ".join(both)
        verb = "is" if len(both) == 1 else "are"
        message = f"{trim(listed)} {verb} listed in both retry.on and retry.never"
        hint = "never wins, so these are not retried; remove them from one list"
        yield Diagnostic("CP109", message, ctx.key_locate(path), hint, path=render_path((*layer.prefix, "retry")))


@rule("CP110", "pattern-conflict")
def pattern_conflict(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports two equally specific patterns that set one field differently for a task both match.

    Without `--app` any name both globs can match counts (the check is exact
    and shows one such name); with `--app` only registered tasks count.

    Why: neither pattern wins, so the effective value is undefined and
    `install()` refuses to boot.

    Example:
        bad:  tasks: {"orders.*": {retry: {max_retries: 5}}, "*.charge": {retry: {max_retries: 8}}}
        good: add an exact entry `orders.charge: {retry: {max_retries: 8}}` or make one pattern more specific
    """
    if ctx.app is not None:
        yield from _app_conflicts(ctx)
        return
    layers = ctx.task_layers()
    globs = [name for name in ctx.document.tasks if is_glob(name) and glob_problem(name) is None]
    by_rank: dict[Specificity, list[str]] = {}
    for name in globs:
        by_rank.setdefault(specificity(name), []).append(name)
    for group in by_rank.values():
        for first, second in candidate_pairs(group):
            a, b = layers[first].leaves, layers[second].leaves
            fields = [p for p in a if p in b and a[p] != b[p]]
            if not fields:
                continue
            witness = common_match(first, second)
            if witness is None:
                continue
            for field in sorted(fields, key=str):
                dotted = ".".join(str(p) for p in field)
                message = (
                    f"patterns '{trim(first)}' and '{trim(second)}' are equally specific and set {dotted} "
                    f"differently ({trim(a[field], 20)} vs {trim(b[field], 20)}) for tasks both match, "
                    f"e.g. '{trim(witness)}'"
                )
                where = ctx.key_locate(("tasks", first, *field))
                hint = (
                    f"the other one is at {where}; add an exact entry for such tasks or make one pattern more specific"
                )
                yield ctx.diagnostic("CP110", message, ("tasks", second, *field), hint)


def _app_conflicts(ctx: LintContext) -> Iterator[Diagnostic]:
    assert ctx.app is not None
    try:
        policy = Policy(RawPolicy(ctx.raw.files, ctx.raw.data, ctx.raw.source), ctx.env)
    except PolicyError:
        return
    seen: set[tuple[Any, ...]] = set()
    for task in ctx.app.user_tasks():
        try:
            policy.for_task(task)
        except PolicyError as exc:
            for diagnostic in exc.diagnostics:
                key = (diagnostic.location, diagnostic.path)
                if diagnostic.code == "CP110" and key not in seen:
                    seen.add(key)
                    yield diagnostic


@rule("CP113", "needs-late-ack")
def needs_late_ack(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports ack settings that only work with `ack.late: true` while late ack is off.

    `max_redeliveries`, `reject_on_worker_lost: true` and
    `on_failure_or_timeout: false` all act on a message that is still
    unacknowledged while the task runs.

    Why: with early ack the message is gone before the task starts, so a
    crash cannot redeliver it; the setting silently does nothing.

    Example:
        bad:  ack: {late: false, max_redeliveries: 3}
        good: ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 3}
    """
    for view in ctx.views():
        ack = view.policy.ack
        if ack.late:
            continue
        problems: list[tuple[str, str]] = []
        if ack.max_redeliveries is not None:
            problems.append(("max_redeliveries", f"ack.max_redeliveries {ack.max_redeliveries} needs ack.late: true"))
        if ack.reject_on_worker_lost:
            problems.append(("reject_on_worker_lost", "ack.reject_on_worker_lost needs ack.late: true"))
        if not ack.on_failure_or_timeout:
            problems.append(("on_failure_or_timeout", "ack.on_failure_or_timeout: false needs ack.late: true"))
        for name, message in problems:
            layer, path = view.blame(("ack", name), ("ack", "late"))
            hint = "with early ack the broker forgets the message before the task runs; set ack.late: true or drop it"
            yield Diagnostic("CP113", message, ctx.key_locate(path), hint, path=render_path((*layer.prefix, "ack")))


@rule("CP114", "retry-limits")
def retry_limits(ctx: LintContext) -> Iterator[Diagnostic]:
    """What it does: reports retry limits that contradict each other.

    `unknown_max_retries` above `max_retries` (unknown errors are meant to
    retry less; unknown errors get the lower of the two, so an environment
    overlay that only lowers `max_retries`, such as `max_retries: 0` in
    development, is not a finding), `unknown_max_retries` with `unknown: fail` (it never
    applies), and a class in `never` that a `rules` entry retries anyway
    (rules apply first, so the `never` entry is dead).

    Why: the policy does something other than what it reads like.

    Example:
        bad:  retry: {unknown: retry, max_retries: 3, unknown_max_retries: 5}
        good: retry: {unknown: retry, max_retries: 5, unknown_max_retries: 2}
    """
    for view in ctx.views():
        retry = view.policy.retry
        # Only the layer that sets unknown_max_retries is blamed: a task that sets `unknown: fail`
        # or a lower max_retries over inherited defaults is overriding them on purpose.
        unknown_max = retry.unknown_max_retries if view.sets(("retry", "unknown_max_retries")) else None
        if unknown_max is not None and retry.unknown == "fail":
            layer, path = view.blame(("retry", "unknown_max_retries"), ("retry", "unknown"))
            message = f"retry.unknown_max_retries {unknown_max} has no effect while retry.unknown is fail"
            hint = "set retry.unknown: retry, or remove unknown_max_retries"
            yield Diagnostic("CP114", message, ctx.key_locate(path), hint, path=render_path((*layer.prefix, "retry")))
        elif (
            unknown_max is not None
            and retry.max_retries is not None
            and unknown_max > retry.max_retries
            and not ctx.overlay_lowers(view, ("retry", "max_retries"), ("retry", "unknown_max_retries"))
        ):
            layer, path = view.blame(("retry", "unknown_max_retries"), ("retry", "max_retries"))
            message = f"retry.unknown_max_retries {unknown_max} is above retry.max_retries {retry.max_retries}"
            hint = "unknown errors are meant to retry less than known ones; lower unknown_max_retries"
            yield Diagnostic("CP114", message, ctx.key_locate(path), hint, path=render_path((*layer.prefix, "retry")))
        never = set(ctx.expand(retry.never))
        for index, retry_rule in enumerate(retry.rules):
            overlap = [ref for ref in ctx.expand(retry_rule.on) if ref in never]
            if not overlap:
                continue
            layer, _ = view.blame(("retry", "rules"), ("retry", "never"))
            rule_path: KeyPath = (*layer.prefix, "retry", "rules", index, "on")
            if view.owner(("retry", "rules")) < view.owner(("retry", "never")):
                rule_path = (*layer.prefix, "retry", "never")
            message = f"{trim(', '.join(overlap))} is in retry.never but retry.rules[{index}] retries it"
            hint = "rules apply before the task's lists, so the never entry has no effect; remove one of them"
            yield Diagnostic("CP114", message, ctx.key_locate(rule_path), hint, path=render_path(rule_path))
