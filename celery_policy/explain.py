"""The effective policy of one task and where it came from, as data and as text or JSON.

``celery-policy explain TASK`` (``cli/explain.py``) prints it. The text output
lists the task and environment, the layers that applied (weakest first),
every effective field grouped by section with its source, and the retry
schedule of the task and of each ``rules`` entry.

``--format json`` prints one object with the same content::

    {
      "task": "orders.charge",
      "env": "production",                 # null without an environment
      "files": ["policies/celery-policy.yaml"],
      "overlays": ["production"],          # environment overlays applied, base-most first
      "layers": [                          # weakest first; "builtin" has no location
        {"layer": "builtin", "location": null},
        {"layer": "defaults", "location": {"file": "...", "line": 5, "column": 3}}
      ],
      "fields": [                          # every effective field, in section order
        {"path": "retry.backoff.initial", "section": "retry",
         "value": 1.0,                     # plain data; durations in seconds
         "display": "1s",                  # as a user would write it
         "duration": true,
         "source": {"layer": "defaults", "overlay": "base",   # or "env:NAME"
                    "location": {"file": "...", "line": 12, "column": 15}}}
      ],
      "schedules": [                       # the task's own first, then one per rules entry
        {"name": "task",                   # or "rules[0]", ...
         "source": null,                   # a rule's own source, as in "fields"
         "on": null,                       # the rule's exception list as written
         "max_retries": 8,                 # null = no cap
         "unknown": "retry",               # task schedule only: retry | fail; null for rules
         "unknown_max_retries": null,      # task schedule only; null = max_retries
         "backoff": {"initial": 1.0, "factor": 2.0, "max": 300.0, "jitter": "full"},
         "delay_from": null,               # exception attribute the delay is read from
         "deadline": 3600.0,               # seconds, or null
         "rows": [{"retry": 1, "delay_min": 0.0, "delay_max": 1.0,
                   "worst_case_total": 1.0, "past_deadline": false}],
         "omitted": 0,                     # retries left out of "rows" (table capped)
         "uncapped": false,                # max_retries null: retries go on past the rows
         "deadline_passed_at": null}       # first retry whose worst-case cumulative delay
                                           # passes the deadline (null: never, within the cap)
      ]
    }

Exception classes are not imported here (``check`` does that): ``explain``
should work in a shell where the app's dependencies are not installed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from celery_policy._render import is_duration_field, render_delay, render_float, render_value
from celery_policy.backoff import deadline_passed_at, delay_bounds, worst_case_total
from celery_policy.budgets import rule_budgets, unknown_budget
from celery_policy.durations import format_duration
from celery_policy.errors import Location
from celery_policy.loader import environment_chain, lookup_origin
from celery_policy.model import Backoff, RetryPolicy, TaskPolicy
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
    for section in TaskPolicy.model_fields:
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
    )


# --- text ------------------------------------------------------------------------


def render_text(explanation: Explanation) -> str:
    """The human-readable report."""
    out: list[str] = []
    env = explanation.env if explanation.env is not None else "(none)"
    out.append(f"task: {explanation.task}")
    out.append(f"env: {env}")
    if len(explanation.overlays) > 1:
        out.append(f"overlays: {' -> '.join(explanation.overlays)}")
    out.append(f"files: {', '.join(explanation.files)}")
    out.append("")
    out.append("layers (weakest first):")
    width = max(len(label) for label, _ in explanation.layers)
    for label, location in explanation.layers:
        where = f"{location.file}:{location.line}" if location is not None else ""
        out.append(f"  {label:<{width}}  {where}".rstrip())
    out.extend(_render_fields(explanation))
    for schedule in explanation.schedules:
        out.append("")
        out.extend(_render_schedule(schedule))
    return "\n".join(out) + "\n"


def _render_fields(explanation: Explanation) -> list[str]:
    out: list[str] = []
    rows: list[tuple[str, str, str, str]] = []
    for field in explanation.fields:
        if field.path == "retry.rules" and field.value:
            count = len(field.value)
            rows.append((field.section, field.path, f"{count} rule{'s' if count != 1 else ''}", str(field.source)))
            for index, rule in enumerate(field.value):
                rows.append((field.section, f"  [{index}]", render_value(rule), str(explanation.rule_sources[index])))
            continue
        rows.append((field.section, field.path, field.display, str(field.source)))
    path_width = max(len(r[1]) for r in rows)
    value_width = min(40, max(len(r[2]) for r in rows))
    section = None
    for row_section, path, value, source in rows:
        if row_section != section:
            section = row_section
            out.append("")
            out.append(f"{section}:")
        out.append(f"  {path:<{path_width}}  {value:<{value_width}}  {source}")
    return out


def _render_schedule(schedule: Schedule) -> list[str]:
    out: list[str] = []
    backoff = schedule.backoff
    if schedule.name == "task":
        out.append("retry schedule:")
    else:
        on = render_value(list(schedule.on or ()))
        out.append(f"retry schedule for {schedule.name} (on: {on}; its own attempt counter):")
    cap = "null (no cap)" if schedule.max_retries is None else str(schedule.max_retries)
    out.append(f"  max_retries: {cap}" + (" (exceptions in on)" if schedule.unknown == "retry" else ""))
    if schedule.unknown == "fail":
        out.append("  unknown exceptions (in neither on nor never): fail at once")
    elif schedule.unknown == "retry":
        limit = schedule.max_retries if schedule.unknown_max_retries is None else schedule.unknown_max_retries
        most = "no cap" if limit is None else f"at most {limit} retr{'y' if limit == 1 else 'ies'}"
        out.append(f"  unknown exceptions (in neither on nor never): {most} on this schedule")
    if schedule.delay_from is not None:
        out.append(f"  delay: from exception attribute {schedule.delay_from}, capped at {format_duration(backoff.max)}")
    when = "  without the attribute, backoff: " if schedule.delay_from is not None else "  backoff: "
    out.append(
        f"{when}initial {format_duration(backoff.initial)}, factor {render_float(backoff.factor)}, "
        f"max {format_duration(backoff.max)}, jitter {backoff.jitter}"
    )
    if schedule.deadline is not None:
        out.append(
            f"  deadline: {format_duration(schedule.deadline)} since the first attempt; "
            "retries stop once the cumulative time passes it"
        )
        if schedule.deadline_passed_at is not None:
            out.append(
                f"    with the highest delays, retry {schedule.deadline_passed_at} would start past it "
                "(time spent running the task comes on top)"
            )
    if not schedule.rows:
        out.append("  no retries: the first failure is final")
        return out
    out.extend(_render_table(schedule))
    return out


def _render_table(schedule: Schedule) -> list[str]:
    out: list[str] = []
    table = [("retry", "delay", "cumulative worst case", "")]
    previous = 0
    for row in schedule.rows:
        if row.retry != previous + 1:
            skipped = row.retry - previous - 1
            table.append(("…", f"{skipped} more retr{'ies' if skipped != 1 else 'y'} not shown", "", ""))
        notes = []
        if schedule.max_retries is not None and row.retry > schedule.max_retries:
            notes.append("unknown exceptions only")
        if row.past_deadline:
            notes.append("past deadline")
        note = ", ".join(notes)
        delay = render_delay(row.delay_min, row.delay_max)
        table.append((str(row.retry), delay, format_duration(row.worst_case_total), note))
        previous = row.retry
    widths = [max(len(r[i]) for r in table if r[0] != "…") for i in range(3)]
    for retry, delay, total, note in table:
        line = f"  {retry:>{widths[0]}}  {delay:<{widths[1]}}  {total:>{widths[2]}}  {note}"
        out.append(line.rstrip())
    if schedule.uncapped:
        cap = format_duration(schedule.backoff.max)
        out.append(f"  {'…':>{widths[0]}}  no cap: retries go on, each later one waiting up to {cap}")
    return out


# --- json ----------------------------------------------------------------------------


def render_json(explanation: Explanation) -> str:
    """The report as the JSON object documented at the top of this module."""
    data = {
        "task": explanation.task,
        "env": explanation.env,
        "files": list(explanation.files),
        "overlays": list(explanation.overlays),
        "layers": [{"layer": label, "location": _location(location)} for label, location in explanation.layers],
        "fields": [
            {
                "path": field.path,
                "section": field.section,
                "value": field.value,
                "display": field.display,
                "duration": field.duration,
                "source": _source(field.source),
            }
            for field in explanation.fields
        ],
        "schedules": [
            _schedule_json(schedule, explanation.rule_sources[index - 1] if index else None)
            for index, schedule in enumerate(explanation.schedules)
        ],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _location(location: Location | None) -> dict[str, Any] | None:
    if location is None:
        return None
    return {"file": location.file, "line": location.line, "column": location.column}


def _source(provenance: Provenance) -> dict[str, Any]:
    return {"layer": provenance.layer, "overlay": provenance.overlay, "location": _location(provenance.location)}


def _schedule_json(schedule: Schedule, source: Provenance | None) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "source": _source(source) if source is not None else None,
        "on": list(schedule.on) if schedule.on is not None else None,
        "max_retries": schedule.max_retries,
        "unknown": schedule.unknown,
        "unknown_max_retries": schedule.unknown_max_retries,
        "backoff": schedule.backoff.model_dump(),
        "delay_from": schedule.delay_from,
        "deadline": schedule.deadline,
        "rows": [
            {
                "retry": row.retry,
                "delay_min": row.delay_min,
                "delay_max": row.delay_max,
                "worst_case_total": row.worst_case_total,
                "past_deadline": row.past_deadline,
            }
            for row in schedule.rows
        ],
        "omitted": schedule.omitted,
        "uncapped": schedule.uncapped,
        "deadline_passed_at": schedule.deadline_passed_at,
    }
