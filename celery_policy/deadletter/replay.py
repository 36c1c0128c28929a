"""Listing, replaying and purging dead letters (the logic behind ``celery-policy dlq``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import DeadLetterStore, Filter, StoreUnavailableError


@dataclass
class ReplayReport:
    replayed: list[tuple[str, str]] = field(default_factory=list)  # (entry id, new task id)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry id, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (entry id, error)
    stopped: str | None = None  # why the run ended before the last record


Publisher = Callable[[DeadLetter, str], None]


def celery_publisher(app: Any) -> Publisher:
    """Publish through a Celery app (``send_task``), which returns only after the broker took the message."""

    def publish(record: DeadLetter, task_id: str) -> None:
        options: dict[str, Any] = {"task_id": task_id}
        if record.queue:
            options["queue"] = record.queue
        app.send_task(record.task, args=record.args, kwargs=record.kwargs, **options)

    return publish


def replay(
    store: DeadLetterStore,
    records: Iterable[DeadLetter],
    publish: Publisher,
    *,
    dry_run: bool = False,
) -> ReplayReport:
    """Re-publish each record with a new task id, then delete it.

    A record is deleted only after its publish returned; if publishing fails
    the record stays, and if deleting fails after a publish the report says so
    (the task then runs once and its record remains: a duplicate, never a loss).
    When the store is unreachable for that delete, the run stops there: going on
    would publish every remaining record without being able to delete it, so a
    later replay would run them all twice. At most the in-flight record is duplicated.
    """
    report = ReplayReport()
    for record in records:
        entry = record.id or "?"
        if not record.replayable:
            report.skipped.append((entry, "arguments were redacted when stored; replay it by hand"))
            continue
        new_id = str(uuid.uuid4())
        if dry_run:
            report.replayed.append((entry, new_id))
            continue
        try:
            publish(record, new_id)
        except Exception as exc:  # broker down: keep the record
            report.failed.append((entry, f"publish failed: {exc}"))
            continue
        try:
            store.delete(entry)
        except Exception as exc:
            report.failed.append((entry, f"published as {new_id} but not deleted: {exc}"))
            if isinstance(exc, StoreUnavailableError):
                report.stopped = "the dead-letter store is unreachable; the remaining records were not replayed"
                break
            continue
        report.replayed.append((entry, new_id))
    return report


def purge(store: DeadLetterStore, flt: Filter) -> int:
    """Delete the matching records; returns how many were deleted."""
    deleted = 0
    for record in list(store.iter(flt)):
        if record.id and store.delete(record.id):
            deleted += 1
    return deleted
