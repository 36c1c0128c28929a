"""Dead letters grouped for triage: counts by task, reason, exception and hour.

A plain function over records, so every reader (``dlq stats``, a web console,
a script) groups the same way::

    rows = group_counts(store.iter(Filter(since_s=3600)), by=("task", "exception", "hour"))
    rows[0].key    # {"task": "orders.charge", "exception": "ConnectionError", "hour": "2026-12-01 14:00"}
    rows[0].count  # 3120
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from celery_policy.deadletter.record import DeadLetter

__all__ = ["DIMENSIONS", "GroupCount", "group_counts", "parse_dimensions", "stats_json", "stats_table"]


def _hour(record: DeadLetter) -> str:
    when = dt.datetime.fromtimestamp(record.last_failure, tz=dt.timezone.utc)
    return when.strftime("%Y-%m-%d %H:00")


# Each dimension: how a record is keyed. ``exception`` is the class name, ``exception_path`` the dotted path.
DIMENSIONS: dict[str, Callable[[DeadLetter], str]] = {
    "task": lambda record: record.task,
    "reason": lambda record: record.reason,
    "exception": lambda record: record.exc_type.rsplit(".", 1)[-1],
    "exception_path": lambda record: record.exc_type,
    "hour": _hour,
    "queue": lambda record: record.queue or "",
    "hostname": lambda record: record.hostname or "",
}


@dataclass(frozen=True)
class GroupCount:
    """One group: its key (dimension -> value), how many records, and the oldest/newest failure in it."""

    key: dict[str, str]
    count: int
    first_failure: float
    last_failure: float
    replayable: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.key,
            "count": self.count,
            "replayable": self.replayable,
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
        }


def parse_dimensions(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"task,reason"`` or ``["task", "reason"]`` -> the dimensions; raises ValueError naming an unknown one."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    found = tuple(part.strip() for part in parts if part.strip())
    unknown = [part for part in found if part not in DIMENSIONS]
    if unknown:
        msg = f"unknown dimension {unknown[0]!r}: choose from {', '.join(DIMENSIONS)}"
        raise ValueError(msg)
    if not found:
        msg = f"no dimension given: choose from {', '.join(DIMENSIONS)}"
        raise ValueError(msg)
    return found


def group_counts(records: Iterable[DeadLetter], by: Sequence[str] = ("task", "reason")) -> list[GroupCount]:
    """Count ``records`` per combination of the ``by`` dimensions, largest group first (ties by key).

    Reads ``records`` once, so a store's streaming iterator is fine. Raises ValueError for an unknown dimension.
    """
    dimensions = parse_dimensions(by)
    keyers = [DIMENSIONS[name] for name in dimensions]
    counts: Counter[tuple[str, ...]] = Counter()
    replayable: Counter[tuple[str, ...]] = Counter()
    first: dict[tuple[str, ...], float] = {}
    last: dict[tuple[str, ...], float] = {}
    for record in records:
        key = tuple(keyer(record) for keyer in keyers)
        counts[key] += 1
        if record.replayable:
            replayable[key] += 1
        first[key] = min(first.get(key, record.first_failure), record.first_failure)
        last[key] = max(last.get(key, record.last_failure), record.last_failure)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [
        GroupCount(dict(zip(dimensions, key, strict=True)), count, first[key], last[key], replayable[key])
        for key, count in ordered
    ]


def stats_table(rows: Sequence[GroupCount], by: Sequence[str]) -> list[str]:
    """Text lines: one column per dimension, then the count (with thousands separators)."""
    dimensions = parse_dimensions(by)
    counts = [f"{row.count:,}" for row in rows]
    widths = [max([len(name), *(len(row.key[name]) for row in rows)]) for name in dimensions]
    count_width = max([len("count"), *(len(c) for c in counts)])
    lines = [
        "  ".join(f"{name:<{w}}" for name, w in zip(dimensions, widths, strict=True)) + f"  {'count':>{count_width}}"
    ]
    for row, count in zip(rows, counts, strict=True):
        cells = "  ".join(f"{row.key[name]:<{w}}" for name, w in zip(dimensions, widths, strict=True))
        lines.append(f"{cells}  {count:>{count_width}}")
    return lines


def stats_json(rows: Sequence[GroupCount], by: Sequence[str]) -> dict[str, Any]:
    """The JSON document of ``dlq stats --format json`` (version 1)."""
    dimensions = parse_dimensions(by)
    return {
        "version": 1,
        "by": list(dimensions),
        "total": sum(row.count for row in rows),
        "counts": [{**row.key, "count": row.count} for row in rows],
        "groups": [row.as_dict() for row in rows],
    }
