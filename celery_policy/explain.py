"""``celery-policy explain TASK``: the effective policy of one task and where it came from.

The text output lists the task and environment, the layers that applied
(weakest first), every effective field grouped by section with its source, and
the retry schedule of the task and of each ``rules`` entry.

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
import math
import os
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pydantic import BaseModel, BeforeValidator

from celery_policy.backoff import delay_bounds
from celery_policy.cli import LINT_FAILED, OK, USAGE
from celery_policy.durations import format_duration, parse_duration
from celery_policy.errors import Diagnostic, Location, PolicyError
from celery_policy.loader import UnreadableFileError, default_policy_paths, environment_chain, lookup_origin
from celery_policy.model import Backoff, RetryPolicy, RetryRule, TaskPolicy
from celery_policy.resolve import BUILTIN, Policy, Provenance, ResolvedPolicy, load

ENV_VARIABLE = "CELERY_POLICY_ENV"
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


def run_explain(task: str, files: Sequence[str], env: str | None = None, fmt: str = "text") -> int:
    """Print ``task``'s effective policy to stdout; diagnostics go to stderr.

    ``files`` default to :func:`celery_policy.loader.default_policy_paths`, ``env``
    to ``$CELERY_POLICY_ENV``. Returns 0, 1 for an invalid policy or unknown
    environment, 2 for an unreadable file.
    """
    paths = list(files) or default_policy_paths()
    if env is None:
        env = os.environ.get(ENV_VARIABLE) or None
    try:
        policy = load(paths, env=env, check_imports=False)
        explanation = explain(policy, task)
    except UnreadableFileError as exc:
        _print_error(exc, sys.stderr)
        return USAGE
    except PolicyError as exc:
        _print_error(exc, sys.stderr)
        return LINT_FAILED
    text = render_json(explanation) if fmt == "json" else render_text(explanation)
    sys.stdout.write(text)
    return OK


def _print_error(exc: PolicyError, stream: TextIO) -> None:
    if not exc.diagnostics:
        stream.write(f"error: {exc}\n")
        return
    for diagnostic in exc.diagnostics:
        stream.write(_render_diagnostic(diagnostic) + "\n")


def _render_diagnostic(diagnostic: Diagnostic) -> str:
    text = diagnostic.render()
    if diagnostic.hint:
        text += f"\n  help: {diagnostic.hint}"
    return text


# --- building the explanation ------------------------------------------------


def explain(policy: Policy, task: str) -> Explanation:
    """Everything ``explain`` prints, as data. Raises :class:`PolicyError` on a pattern conflict (CP110)."""
    resolved = policy.for_task(task)
    prefixes = {layer.label: layer.prefix for layer in policy.matching_layers(task)}
    layers: list[tuple[str, Location | None]] = [(BUILTIN, None)]
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
        _walk(resolved, section, value, path=section, duration=_is_duration_field(TaskPolicy, section), found=found)
    return found


def _walk(resolved: ResolvedPolicy, section: str, value: Any, *, path: str, duration: bool, found: list[Field]) -> None:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            child_duration = _is_duration_field(type(value), name)
            _walk(resolved, section, getattr(value, name), path=f"{path}.{name}", duration=child_duration, found=found)
        return
    plain = [rule.model_dump(exclude_unset=True) for rule in value] if path == "retry.rules" else value
    display = render_value(plain, duration)
    found.append(Field(path, section, plain, display, duration, resolved.source_of(path)))


def _is_duration_field(model: type[BaseModel], name: str) -> bool:
    return _is_duration(model.model_fields[name].annotation) or any(
        isinstance(m, BeforeValidator) and m.func is parse_duration for m in model.model_fields[name].metadata
    )


def _is_duration(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in annotation.__metadata__)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_duration(arg) for arg in typing.get_args(annotation))
    return False


def schedules(retry: RetryPolicy) -> list[Schedule]:
    """The task's retry schedule, then one per ``rules`` entry (each keeps its own counter).

    The task's table covers the longer of the budgets for ``on`` and for unknown
    exceptions: both wait by the task's backoff, each with its own counter.
    """
    rows_for = retry.max_retries
    if retry.unknown == "retry":
        unknown_budget = retry.max_retries if retry.unknown_max_retries is None else retry.unknown_max_retries
        rows_for = None if rows_for is None or unknown_budget is None else max(rows_for, unknown_budget)
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
    for index, rule in enumerate(retry.rules):
        # As the runtime reads it: an explicit ``max_retries: null`` in a rule means no cap.
        rule_budget = rule.max_retries if "max_retries" in rule.model_fields_set else retry.max_retries
        found.append(
            _schedule(
                f"rules[{index}]",
                on=tuple(rule.on),
                rows_for=rule_budget,
                max_retries=rule_budget,
                backoff=rule_backoff(retry.backoff, rule),
                delay_from=rule.delay_from,
                deadline=retry.deadline,
            )
        )
    return found


def rule_backoff(task_backoff: Backoff, rule: RetryRule) -> Backoff:
    """The backoff a rule uses: the fields it sets, the task's for the rest."""
    if rule.backoff is None:
        return task_backoff
    return task_backoff.model_copy(update=rule.backoff.model_dump(exclude_unset=True))


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
        low, high = _bounds(backoff, retries_made, delay_from)
        total = _worst_case_total(backoff, delay_from, retries_made + 1)
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
        deadline_passed_at=_deadline_passed_at(backoff, delay_from, deadline, retries),
    )


def _bounds(backoff: Backoff, retries_made: int, delay_from: str | None) -> tuple[float, float]:
    if delay_from is not None:
        # The exception says how long to wait; only the cap is known in advance.
        return 0.0, backoff.max
    return delay_bounds(backoff, retries_made)


def _worst_case_total(backoff: Backoff, delay_from: str | None, retries: int) -> float:
    """Sum of the highest delays of the first ``retries`` retries.

    Delays never shrink (factor >= 1), so once one stops growing every later
    one is the same: the loop is short even for a huge ``max_retries``.
    """
    total = 0.0
    previous = -1.0
    for retries_made in range(retries):
        high = _bounds(backoff, retries_made, delay_from)[1]
        if high == previous:
            return total + high * (retries - retries_made)
        total += high
        previous = high
    return total


def _deadline_passed_at(
    backoff: Backoff, delay_from: str | None, deadline: float | None, max_retries: int | None
) -> int | None:
    """The first retry whose cumulative worst-case delay passes the deadline (within the cap)."""
    if deadline is None:
        return None
    total = 0.0
    previous = -1.0
    retries_made = 0
    while max_retries is None or retries_made < max_retries:
        high = _bounds(backoff, retries_made, delay_from)[1]
        if high == previous:
            if high <= 0:
                return None
            # Every later delay is ``high``: jump straight to the retry that passes the deadline.
            needed = math.floor((deadline - total) / high) + 1
            retry = retries_made + needed
            return retry if max_retries is None or retry <= max_retries else None
        total += high
        previous = high
        retries_made += 1
        if total > deadline:
            return retries_made
    return None


# --- rendering values ----------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][\w.\-/*?@]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def render_value(value: Any, duration: bool = False) -> str:
    """A value the way a user writes it in YAML (flow style); durations as ``1h30m``."""
    if isinstance(value, Mapping):
        items = (f"{_render_key(str(k))}: {render_value(v, str(k) in _DURATION_KEYS)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    return _render_scalar(value, duration)


def _render_scalar(value: Any, duration: bool) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if duration and isinstance(value, int | float):
        return format_duration(float(value))
    if isinstance(value, float):
        return _render_float(value)
    if isinstance(value, str):
        return _render_string(value)
    return str(value)


# Keys whose values are durations inside a rendered ``rules`` entry (a rule's backoff).
_DURATION_KEYS = frozenset({"initial", "max"})


def _render_float(value: float) -> str:
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def _render_key(key: str) -> str:
    # Our reader keeps ``on`` and friends as string keys, so keys need no quoting for them.
    return key if _PLAIN.match(key) else json.dumps(key, ensure_ascii=False)


def _render_string(value: str) -> str:
    if _PLAIN.match(value) and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value, ensure_ascii=False)


def _delay(low: float, high: float) -> str:
    if low == high:
        return format_duration(high)
    return f"{format_duration(low)} .. {format_duration(high)}"


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
        f"{when}initial {format_duration(backoff.initial)}, factor {_render_float(backoff.factor)}, "
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
        delay = _delay(row.delay_min, row.delay_max)
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
