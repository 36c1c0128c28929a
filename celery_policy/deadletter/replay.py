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
REPLAY_OF_HEADER = (
    "celery_policy_replay_of"  # the dead record a replayed task came from: "<store entry id> <old task id>"
)


def replay_headers(record: DeadLetter) -> dict[str, str]:
    """Headers of a replayed task: a link back to the dead record it was made from."""
    return {REPLAY_OF_HEADER: f"{record.id or '?'} {record.task_id or '?'}"}


class celery_publisher:
    """Publish through a Celery app (``send_task``), which returns only after the broker took the message.

    One producer (one connection) is held for the whole replay instead of one
    pool round trip per record; :meth:`close` gives it back.
    """

    def __init__(self, app: Any, queue: str | None = None) -> None:
        self.app = app
        self.queue = queue  # publish to this queue instead of the one the task failed on
        self._producer: Any = None

    def __call__(self, record: DeadLetter, task_id: str) -> None:
        options: dict[str, Any] = {"task_id": task_id, "headers": replay_headers(record)}
        if self.queue or record.queue:
            options["queue"] = self.queue or record.queue
        if self._producer is None:
            self._producer = self.app.producer_pool.acquire(block=True)
        try:
            self.app.send_task(record.task, args=record.args, kwargs=record.kwargs, producer=self._producer, **options)
        except Exception:
            self.close()  # a broken connection must not be reused for the next record
            raise

    def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.release()


REDACTED_SKIP = "arguments were redacted when stored; replay it by hand, or pass --allow-redacted to send '***'"


def replay(
    store: DeadLetterStore,
    records: Iterable[DeadLetter],
    publish: Publisher,
    *,
    dry_run: bool = False,
    batch: int = 1,
    allow_redacted: bool = False,
) -> ReplayReport:
    """Re-publish each record with a new task id, then delete it.

    A record is deleted only after its publish returned; if publishing fails
    the record stays, and if deleting fails after a publish the report says so
    (the task then runs once and its record remains: a duplicate, never a loss).
    When the store is unreachable for that delete, the run stops there: going on
    would publish every remaining record without being able to delete it, so a
    later replay would run them all twice. Deletes go out in batches of ``batch``
    records, all already published; at most that many are duplicated if the store
    fails at that moment, never lost.
    """
    report = ReplayReport()
    published: list[tuple[str, str]] = []
    try:
        for record in records:
            new_id = publish_one(record, publish, report, dry_run=dry_run, allow_redacted=allow_redacted)
            if new_id is None:
                continue
            published.append((record.id or "?", new_id))
            if len(published) >= batch and not _delete_published(store, published, report):
                return report
        _delete_published(store, published, report)
    finally:
        close = getattr(publish, "close", None)
        if close is not None:
            close()
    return report


def publish_one(
    record: DeadLetter, publish: Publisher, report: ReplayReport, *, dry_run: bool, allow_redacted: bool
) -> str | None:
    """Publish one record under a new task id; returns the id when the caller should now remove the record.

    Skipped (redacted), dry-run and failed publishes are entered in ``report`` and return None:
    the record stays where it is.
    """
    entry = record.id or "?"
    if not record.replayable and not allow_redacted:
        report.skipped.append((entry, REDACTED_SKIP))
        return None
    new_id = str(uuid.uuid4())
    if dry_run:
        report.replayed.append((entry, new_id))
        return None
    try:
        publish(record, new_id)
    except Exception as exc:  # broker down or refusing: the record stays
        report.failed.append((entry, f"publish failed: {exc}"))
        return None
    return new_id


def _delete_published(store: DeadLetterStore, published: list[tuple[str, str]], report: ReplayReport) -> bool:
    """Delete the records already published; False (and ``report.stopped``) when the store is gone."""
    if not published:
        return True
    entries = [entry for entry, _ in published]
    try:
        _delete_many(store, entries)
    except Exception as exc:
        for entry, new_id in published:
            report.failed.append((entry, f"published as {new_id} but not deleted: {exc}"))
        published.clear()
        if isinstance(exc, StoreUnavailableError):
            report.stopped = "the dead-letter store is unreachable; the remaining records were not replayed"
            return False
        return True
    report.replayed.extend(published)
    published.clear()
    return True


def _delete_many(store: DeadLetterStore, entries: list[str]) -> None:
    delete_many = getattr(store, "delete_many", None)
    if delete_many is not None:
        delete_many(entries)
        return
    for entry in entries:
        store.delete(entry)


def purge(store: DeadLetterStore, flt: Filter) -> int:
    """Delete the matching records; returns how many were deleted."""
    deleted = 0
    for record in list(store.iter(flt)):
        if record.id and store.delete(record.id):
            deleted += 1
    return deleted
