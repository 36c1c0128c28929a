"""The two renderings of an :class:`~celery_policy.explain.Explanation`: text for people, JSON for tools.

``--format json`` prints one object with the same content as the text::

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
         "deadline_passed_at": null,       # first retry whose worst-case cumulative delay
                                           # passes the deadline (null: never, within the cap)
         "self_retry": "task",             # task schedule only: what the task's own self.retry()
                                           # follows (task: Celery's countdown and cap; policy: this)
         "decided_by_policy": true}        # task schedule only: false when the policy retries nothing
      ]
    }
"""

from __future__ import annotations

import json
from typing import Any

from celery_policy._render import render_delay, render_float, render_value
from celery_policy.durations import format_duration
from celery_policy.errors import Location
from celery_policy.explain import Explanation, Flow, Schedule
from celery_policy.resolve import Provenance

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
    if explanation.flow is not None:
        out.append("")
        out.extend(_render_flow(explanation.flow))
    for schedule in explanation.schedules:
        out.append("")
        out.extend(_render_schedule(schedule))
    return "\n".join(out) + "\n"


def _render_flow(flow: Flow) -> list[str]:
    out = ["flow control (state shared by every worker):"]
    if flow.breaker is not None:
        where = f"  {flow.breaker_location.file}:{flow.breaker_location.line}" if flow.breaker_location else ""
        settings = flow.breaker_settings
        if settings is None:
            out.append(f"  breaker {flow.breaker}: not defined in 'breakers'")
        else:
            out.append(
                f"  breaker {flow.breaker}: opens at {settings['failure_rate']:.0%} failures of at least "
                f"{settings['min_calls']} calls in {render_value(settings['window'], True)}, stays open "
                f"{render_value(settings['open_for'], True)}, then {settings['half_open_calls']} probes{where}"
            )
            out.append(f"    counts: {render_value(list(flow.counts))} ({flow.counts_from})")
    if flow.limit is not None:
        where = f"  {flow.limit_location.file}:{flow.limit_location.line}" if flow.limit_location else ""
        settings = flow.limit_settings
        if settings is None:
            out.append(f"  limit {flow.limit}: not defined in 'limits'")
        else:
            out.append(f"  limit {flow.limit}: {settings['rate']} for the fleet, burst {settings['burst']}{where}")
    cap = f", at most {flow.snooze_max} snoozes" if flow.snooze_max is not None else ""
    out.append(
        f"  snoozed without spending a retry for up to {render_value(flow.snooze_deadline_s, True)} "
        f"({flow.snooze_deadline_from}){cap}; then reason breaker_open / rate_limited"
    )
    return out


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
        if limit is not None and schedule.max_retries is not None:
            limit = min(limit, schedule.max_retries)  # unknown errors get the lower of the two (budgets.py)
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
    if schedule.self_retry is not None:
        out.extend(_render_self_retry(schedule))
        if not schedule.decided and schedule.self_retry == "task":
            return out  # no table: nothing would ever wait on it
    if not schedule.rows:
        out.append("  no retries: the first failure is final")
        return out
    out.extend(_render_table(schedule))
    return out


def _render_self_retry(schedule: Schedule) -> list[str]:
    """Who retries, and which cap applies to the task's own ``self.retry()`` (``retry.self_retry``)."""
    out: list[str] = []
    if not schedule.decided:
        out.append("  the policy decides no retries for this task (retry.on and rules are empty, unknown: fail)")
    if schedule.self_retry == "policy":
        out.append(
            "  the task's own self.retry() without countdown waits this schedule and is capped at max_retries "
            "(retry.self_retry: policy)"
        )
    else:
        out.append(
            "  the task's own self.retry() keeps Celery's countdown, default_retry_delay and the task's "
            "max_retries (retry.self_retry: task)"
        )
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
    data: dict[str, Any] = {
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
    if explanation.flow is not None:
        flow = explanation.flow
        data["flow"] = {
            "breaker": flow.breaker,
            "breaker_settings": flow.breaker_settings,
            "breaker_location": _location(flow.breaker_location),
            "counts": list(flow.counts),
            "counts_from": flow.counts_from,
            "limit": flow.limit,
            "limit_settings": flow.limit_settings,
            "limit_location": _location(flow.limit_location),
            "snooze_deadline_s": flow.snooze_deadline_s,
            "snooze_deadline_from": flow.snooze_deadline_from,
            "snooze_max": flow.snooze_max,
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
        **(
            {"self_retry": schedule.self_retry, "decided_by_policy": schedule.decided}
            if schedule.self_retry is not None
            else {}
        ),
    }
