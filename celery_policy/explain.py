"""The effective policy of one task and where it came from, as data (:class:`Explanation`).

It holds the task and environment, the layers that applied (weakest first),
every effective field with its source, and the retry schedule of the task and
of each ``rules`` entry. :mod:`celery_policy.explain_report` renders it as text
or JSON; ``celery-policy explain TASK`` (``cli/explain.py``) prints that.

Exception classes are not imported here (``check`` does that): ``explain``
should work in a shell where the app's dependencies are not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from celery_policy._render import is_duration_field, render_value
from celery_policy.backoff import deadline_passed_at, delay_bounds, worst_case_total
from celery_policy.budgets import rule_budgets, unknown_budget
from celery_policy.errors import Location
from celery_policy.loader import environment_chain, lookup_origin
from celery_policy.model import Backoff, RetryPolicy, TaskPolicy, snooze_deadline
from celery_policy.resolve import BUILTIN_LAYER, Policy, Provenance, ResolvedPolicy

MAX_ROWS = 12  # schedule rows shown; longer schedules show the first ones and the last


@dataclass(frozen=True, slots=True)
class Field:
    path: str
    section: str
    value: Any
    display: str
    duration: bool
    source: Provenance


@dataclass(frozen=True, slots=True)
class Row:
    retry: int
    delay_min: float
    delay_max: float
    worst_case_total: float
    past_deadline: bool


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    on: tuple[str, ...] | None
    max_retries: int | None
    unknown: str | None
    unknown_max_retries: int | None
    backoff: Backoff
    delay_from: str | None
    deadline: float | None
    rows: tuple[Row, ...]
    omitted: int
    uncapped: bool
    deadline_passed_at: int | None
    self_retry: str | None = None  # task schedule only: what the task's own self.retry() follows
    decided: bool = True  # task schedule only: the policy decides retries (on, unknown: retry or rules)


@dataclass(frozen=True, slots=True)
class Explanation:
    task: str
    env: str | None
    files: tuple[str, ...]
    overlays: tuple[str, ...]
    layers: tuple[tuple[str, Location | None], ...]
    fields: tuple[Field, ...]
    rule_sources: tuple[Provenance, ...]
    schedules: tuple[Schedule, ...]
    flow: Flow | None = None


@dataclass(frozen=True, slots=True)
class Flow:
    """The task's breaker and limit as the fleet shares them (``breakers`` / ``limits`` blocks)."""

    breaker: str | None
    breaker_settings: dict[str, Any] | None  # effective, None when the name is unknown
    breaker_location: Location | None
    counts: tuple[str, ...]  # the failures the breaker counts
    counts_from: str  # "breaker.on" or "retry.on"
    limit: str | None
    limit_settings: dict[str, Any] | None
    limit_location: Location | None
    snooze_deadline_s: float
    snooze_deadline_from: str  # "snooze.deadline", "retry.deadline" or "default"
    snooze_max: int | None


FLOW_FIELDS = ("breaker", "limit", "snooze")  # listed among the fields only for a task that uses them


# --- building the explanation ------------------------------------------------


def explain(policy: Policy, task: str) -> Explanation:
    """Everything ``explain`` prints, as data. Raises :class:`PolicyError` on a pattern conflict (CP110)."""
    resolved = policy.for_task(task)
    prefixes = {layer.label: layer.prefix for layer in policy.matching_layers(task)}
    layers: list[tuple[str, Location | None]] = [(BUILTIN_LAYER, None)]
    layers.extend((label, _own_location(policy, prefixes[label])) for label in resolved.layers)
    overlays = tuple(environment_chain(policy.raw, policy.env)) if policy.env is not None else ()
    rules = resolved.policy.retry.rules
    rules_source = resolved.source_of("retry.rules")
    rule_sources = tuple(_rule_source(policy, prefixes, rules_source, index) for index in range(len(rules)))
    return Explanation(
        task=task,
        env=policy.env,
        files=tuple(policy.files),
        overlays=overlays,
        layers=tuple(layers),
        fields=tuple(effective_fields(resolved)),
        rule_sources=rule_sources,
        schedules=tuple(schedules(resolved.policy.retry)),
        flow=flow_of(policy, resolved),
    )


def flow_of(policy: Policy, resolved: ResolvedPolicy) -> Flow | None:
    """The task's breaker, limit and snooze budget; None when it names neither a breaker nor a limit."""
    task = resolved.policy
    if task.breaker is None and task.limit is None:
        return None
    document = policy.document
    breaker = document.breakers.get(task.breaker) if task.breaker is not None else None
    limit = document.limits.get(task.limit) if task.limit is not None else None
    if breaker is not None and breaker.on is not None:
        counts, counts_from = tuple(breaker.on), "breaker.on"
    else:
        counts, counts_from = tuple(task.retry.on), "retry.on"
    if task.snooze.deadline is not None:
        deadline, deadline_from = task.snooze.deadline, "snooze.deadline"
    elif task.retry.deadline is not None:
        deadline, deadline_from = task.retry.deadline, "retry.deadline"
    else:
        deadline, deadline_from = snooze_deadline(task), "default"
    return Flow(
        breaker=task.breaker,
        breaker_settings=breaker.model_dump() if breaker is not None else None,
        breaker_location=_own_location(policy, ("breakers", task.breaker)) if task.breaker else None,
        counts=counts,
        counts_from=counts_from,
        limit=task.limit,
        limit_settings=limit.model_dump() if limit is not None else None,
        limit_location=_own_location(policy, ("limits", task.limit)) if task.limit else None,
        snooze_deadline_s=deadline,
        snooze_deadline_from=deadline_from,
        snooze_max=task.snooze.max,
    )


def _own_location(policy: Policy, path: tuple[str | int, ...]) -> Location | None:
    # No ancestor fallback: a file without a ``defaults`` key has no location for that layer.
    origin = policy.source.get(path)
    return (origin.key_location or origin.location) if origin is not None else None


def _rule_source(policy: Policy, prefixes: Mapping[str, Any], rules_source: Provenance, index: int) -> Provenance:
    prefix = prefixes.get(rules_source.layer)
    if prefix is None:
        return rules_source
    origin = lookup_origin(policy.source, (*prefix, "retry", "rules", index))
    if origin is None:
        return rules_source
    return Provenance(rules_source.layer, origin.location, origin.layer)


def effective_fields(resolved: ResolvedPolicy) -> list[Field]:
    """Every leaf field of the effective policy, in model order, with its source."""
    found: list[Field] = []
    uses_flow = resolved.policy.breaker is not None or resolved.policy.limit is not None
    for section in TaskPolicy.model_fields:
        if section in FLOW_FIELDS and not uses_flow:
            continue
        value = getattr(resolved.policy, section)
        _walk(resolved, section, value, path=section, duration=is_duration_field(TaskPolicy, section), found=found)
    return found


def _walk(resolved: ResolvedPolicy, section: str, value: Any, *, path: str, duration: bool, found: list[Field]) -> None:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            child_duration = is_duration_field(type(value), name)
            _walk(resolved, section, getattr(value, name), path=f"{path}.{name}", duration=child_duration, found=found)
        return
    plain = [rule.model_dump(exclude_unset=True) for rule in value] if path == "retry.rules" else value
    display = render_value(plain, duration)
    found.append(Field(path, section, plain, display, duration, resolved.source_of(path)))


def schedules(retry: RetryPolicy) -> list[Schedule]:
    """The task's retry schedule, then one per ``rules`` entry (each keeps its own counter).

    The task's table covers the longer of the budgets for ``on`` and for unknown
    exceptions: both wait by the task's backoff, each with its own counter.
    """
    rows_for = retry.max_retries
    if retry.unknown == "retry":
        unknown = unknown_budget(retry)
        rows_for = None if rows_for is None or unknown is None else max(rows_for, unknown)
    found = [
        _schedule(
            "task",
            rows_for=rows_for,
            max_retries=retry.max_retries,
            unknown=retry.unknown,
            unknown_max_retries=retry.unknown_max_retries,
            backoff=retry.backoff,
            deadline=retry.deadline,
            self_retry=retry.self_retry,
            decided=bool(retry.on or retry.rules or retry.unknown == "retry"),
        )
    ]
    for budget, rule in zip(rule_budgets(retry), retry.rules, strict=True):
        found.append(
            _schedule(
                budget.label.removeprefix("retry."),
                on=tuple(rule.on),
                rows_for=budget.retries,
                max_retries=budget.retries,
                backoff=budget.backoff,
                delay_from=budget.delay_from,
                deadline=retry.deadline,
            )
        )
    return found


def _schedule(
    name: str,
    *,
    rows_for: int | None,
    on: tuple[str, ...] | None = None,
    max_retries: int | None,
    unknown: str | None = None,
    unknown_max_retries: int | None = None,
    backoff: Backoff,
    delay_from: str | None = None,
    deadline: float | None,
    self_retry: str | None = None,
    decided: bool = True,
) -> Schedule:
    retries = rows_for  # how many retries the table covers; None = no cap
    count = MAX_ROWS if retries is None else retries
    shown = list(range(count)) if count <= MAX_ROWS else [*range(MAX_ROWS - 1), count - 1]
    rows: list[Row] = []
    for retries_made in shown:
        low, high = delay_bounds(backoff, retries_made, delay_from)
        total = worst_case_total(backoff, retries_made + 1, delay_from)
        rows.append(Row(retries_made + 1, low, high, total, deadline is not None and total > deadline))
    omitted = 0 if retries is None else max(0, retries - len(rows))
    return Schedule(
        name=name,
        on=on,
        max_retries=max_retries,
        unknown=unknown,
        unknown_max_retries=unknown_max_retries,
        backoff=backoff,
        delay_from=delay_from,
        deadline=deadline,
        rows=tuple(rows),
        omitted=omitted,
        uncapped=retries is None,
        deadline_passed_at=deadline_passed_at(backoff, delay_from, deadline, retries),
        self_retry=self_retry,
        decided=decided,
    )
