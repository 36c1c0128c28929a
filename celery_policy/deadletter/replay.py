"""Replaying and purging dead letters (the logic behind ``celery-policy dlq replay|purge``).

:func:`replay_dead_letters` is the one entry point: filters, ``rate``, ``spread``,
``max_records``, ``dry_run``, ``name`` in, a :class:`ReplayReport` out. The CLI
and any other caller (a web console) use it the same way::

    report = replay_dead_letters(store, celery_publisher(app), Filter(task="orders.*"), rate="200/s", name="INC-42")

The rule every path keeps: a record is removed from the store only after the
broker confirmed its replay was published. A publish that fails leaves the
record; a removal that fails after a publish is reported (the task runs and
its record stays: a duplicate on the next replay, never a loss).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from celery_policy.deadletter._pacing import Spread, TokenBucket, parse_rate
from celery_policy.deadletter.canvas import chord_member, send_options
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import DeadLetterStore, Filter, StoreUnavailableError
from celery_policy.durations import parse_duration

__all__ = [
    "NAME_HEADER",
    "REPLAY_OF_HEADER",
    "Outgoing",
    "ReplayReport",
    "TokenBucket",
    "celery_publisher",
    "parse_rate",
    "purge",
    "replay",
    "replay_dead_letters",
    "replay_headers",
]

REPLAY_OF_HEADER = (
    "celery_policy_replay_of"  # the dead record a replayed task came from: "<store entry id> <old task id>"
)
NAME_HEADER = "celery_policy_replay_name"  # the incident label of a bulk replay (--name)
FRESH_BUDGET_NOTE = "replayed tasks start with a fresh retry budget (retries 0, the deadline counts from the replay)"
REDACTED_SKIP = "arguments were redacted when stored; replay it by hand, or pass --allow-redacted to send '***'"
CHORD_SKIP = (
    "the task was a member of chord {group}, which already failed; Celery cannot rejoin it, "
    "so the chord body will not run. Pass --without-chord to run this task alone"
)

_log = structlog.get_logger("celery_policy")


@dataclass(frozen=True)
class Outgoing:
    """One replay about to be published."""

    record: DeadLetter
    task_id: str
    eta: float | None = None  # epoch seconds (``--spread``); None: run now
    name: str | None = None  # incident label


# A publisher is called as ``publish(record, task_id, eta=..., name=...)`` (``eta``/``name`` only when set) and
# returns only once the broker confirmed the message (it raises otherwise). It may also offer
# ``publish_many(items: list[Outgoing]) -> list[BaseException | None]`` (one confirmation per item, in order)
# and ``close()``.
Publisher = Callable[..., None]


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do)."""

    replayed: list[tuple[str, str]] = field(default_factory=list)  # (entry id, new task id)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry id, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (entry id, error)
    stopped: str | None = None  # why the run ended before the last record
    dry_run: bool = False
    name: str | None = None
    planned: int | None = None  # records selected for replay, when known up front
    by_task: Counter[str] = field(default_factory=Counter)  # replayed (or would be) per task
    by_reason: Counter[str] = field(default_factory=Counter)  # replayed (or would be) per dead-letter reason
    started: float = field(default_factory=time.monotonic)
    elapsed_s: float = 0.0

    @property
    def done(self) -> int:
        return len(self.replayed) + len(self.skipped) + len(self.failed)

    @property
    def rate_per_s(self) -> float:
        return len(self.replayed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "name": self.name,
            "planned": self.planned,
            "replayed": len(self.replayed),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "stopped": self.stopped,
            "by_task": dict(self.by_task),
            "by_reason": dict(self.by_reason),
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.rate_per_s, 1),
        }


# --- the one place where a record's replay outcome is decided and recorded ----------------------------


def refusal(record: DeadLetter, *, allow_redacted: bool, without_chord: bool) -> str | None:
    """Why ``record`` must not be replayed as asked, or None when it may be."""
    if not record.replayable and not allow_redacted:
        return REDACTED_SKIP
    if chord_member(record) and not without_chord:
        return CHORD_SKIP.format(group=record.group_id or "?")
    return None


def settle(report: ReplayReport, record: DeadLetter, outcome: str, detail: str, log: Any = None) -> None:
    """Record the final outcome of one record: ``replayed``, ``skipped`` or ``failed``.

    Every outcome of every replay path goes through here (counters and log events hook in here).
    """
    entry = record.id or "?"
    if outcome == "replayed":
        report.replayed.append((entry, detail))
        report.by_task[record.task] += 1
        report.by_reason[record.reason] += 1
    elif outcome == "skipped":
        report.skipped.append((entry, detail))
    else:
        report.failed.append((entry, detail))
    (log or _log).info(
        "dlq_replay_record",
        outcome=("would_replay" if report.dry_run and outcome == "replayed" else outcome),
        entry=entry,
        task=record.task,
        task_id=record.task_id,
        reason=record.reason,
        name=report.name,
        detail=detail,
    )


# --- sources: where records come from and how they are removed once replayed --------------------------


class _RemoveFailed(Exception):
    def __init__(self, message: str, stop: str | None) -> None:
        super().__init__(message)
        self.stop = stop


class Source(Protocol):
    def records(self) -> Iterator[DeadLetter]: ...
    def remove(self, records: list[DeadLetter]) -> None: ...  # raises _RemoveFailed
    def close(self) -> None: ...


class _StreamSource:
    """Records of a store that deletes by entry id (the Redis stream), deleted in batches after the publish."""

    def __init__(self, store: DeadLetterStore, records: Iterable[DeadLetter]) -> None:
        self.store = store
        self._records = records

    def records(self) -> Iterator[DeadLetter]:
        yield from self._records

    def remove(self, records: list[DeadLetter]) -> None:
        entries = [record.id or "?" for record in records]
        try:
            delete_many = getattr(self.store, "delete_many", None)
            if delete_many is not None:
                delete_many(entries)
            else:
                for entry in entries:
                    self.store.delete(entry)
        except StoreUnavailableError as exc:
            stop = "the dead-letter store is unreachable; the remaining records were not replayed"
            raise _RemoveFailed(str(exc), stop) from exc
        except Exception as exc:
            raise _RemoveFailed(str(exc), None) from exc

    def close(self) -> None:
        return None


# --- the engine --------------------------------------------------------------------------------------


def replay_dead_letters(
    store: Any,
    publish: Publisher,
    flt: Filter | None = None,
    *,
    rate: str | float | None = None,
    spread: str | float | None = None,
    max_records: int | None = None,
    dry_run: bool = False,
    name: str | None = None,
    allow_redacted: bool = False,
    without_chord: bool = False,
    batch: int = 1,
    stop: threading.Event | None = None,
    on_progress: Callable[[ReplayReport], None] | None = None,
    records: Iterable[DeadLetter] | None = None,
    log: Any = None,
) -> ReplayReport:
    """Replay the dead letters of ``store`` that ``flt`` selects; returns what happened.

    - ``rate``: at most this many publishes per second (``"200/s"``, a token bucket); None: unlimited.
    - ``spread``: a duration (``"60s"``); each replay gets an ETA inside that window from now, jittered,
      so the workers take them over the window whatever the publish rate.
    - ``max_records``: replay at most this many (skipped records do not count).
    - ``dry_run``: publish and remove nothing; the report counts what would be replayed by task and reason.
    - ``name``: an incident label, sent in the ``celery_policy_replay_name`` header and in every log event.
    - ``allow_redacted``: replay records whose arguments were redacted (with ``***``).
    - ``without_chord``: replay a chord member alone (its chord already failed); refused otherwise.
    - ``batch``: publish (when the publisher can) and remove records in groups of this many.
    - ``stop``: set it (e.g. from a SIGTERM handler) to end after the records in flight.
    - ``records``: replay these (already read) records instead of reading ``store`` with ``flt``.

    Replayed tasks keep their canvas (chain, link, link_error, group, root and parent ids, priority,
    headers) under a new task id, and start with a fresh retry budget. Raises
    :class:`StoreUnavailableError` when the store cannot be read at all, ``ValueError`` for a bad
    ``rate`` or ``spread``.
    """
    flt = flt or Filter()
    rate_per_s = parse_rate(rate)
    spread_s = parse_duration(spread) if spread is not None and spread != "" else None
    report = ReplayReport(dry_run=dry_run, name=name)
    claim = getattr(store, "claim", None)
    if records is None and claim is None:
        records = list(store.iter(flt))
    if records is not None:
        source: Source = _StreamSource(store, records)
    else:
        assert claim is not None
        source = claim(flt)
    if isinstance(records, list):
        allowed = (refusal(r, allow_redacted=allow_redacted, without_chord=without_chord) is None for r in records)
        report.planned = sum(1 for ok in allowed if ok)
        if max_records is not None:
            report.planned = min(report.planned, max_records)
    spreader = Spread(spread_s, report.planned) if spread_s else None
    # A burst of 50 ms worth of tokens absorbs the oversleep of each pause (with a burst of 1 every
    # late wake-up is lost and the achieved rate falls short), while no second sees more than rate + 5 %.
    bucket = TokenBucket(rate_per_s, burst=rate_per_s * 0.05) if rate_per_s else None
    logger = log or _log
    logger.info(
        "dlq_replay_started", name=name, dry_run=dry_run, planned=report.planned, rate_per_s=rate_per_s,
        spread_s=spread_s, max_records=max_records, store=_describe(store),
    )  # fmt: skip
    batch = max(1, min(batch, getattr(source, "max_batch", batch)))
    engine = _Engine(report, source, publish, batch, logger, on_progress)
    report.started = time.monotonic()  # the rate and the progress ETA count from here, not from the read
    try:
        engine.run(
            bucket=bucket, spreader=spreader, max_records=max_records, allow_redacted=allow_redacted,
            without_chord=without_chord, stop=stop,
        )  # fmt: skip
    finally:
        source.close()
        close = getattr(publish, "close", None)
        if close is not None:
            close()
        report.elapsed_s = time.monotonic() - report.started
    logger.info("dlq_replay_finished", **report.as_dict())
    return report


class _Engine:
    def __init__(
        self,
        report: ReplayReport,
        source: Source,
        publish: Publisher,
        batch: int,
        log: Any,
        on_progress: Callable[[ReplayReport], None] | None,
    ) -> None:
        self.report = report
        self.source = source
        self.publish = publish
        self.batch = batch
        self.log = log
        self.on_progress = on_progress
        self.pending: list[Outgoing] = []  # taken, not yet published
        self.published: list[Outgoing] = []  # confirmed published, not yet removed

    def run(
        self,
        *,
        bucket: TokenBucket | None,
        spreader: Spread | None,
        max_records: int | None,
        allow_redacted: bool,
        without_chord: bool,
        stop: threading.Event | None,
    ) -> None:
        report = self.report
        taken = 0
        for record in self.source.records():
            if stop is not None and stop.is_set():
                report.stopped = "interrupted; the records not replayed yet stay in the store"
                break
            if max_records is not None and taken >= max_records:
                break
            why = refusal(record, allow_redacted=allow_redacted, without_chord=without_chord)
            if why is not None:
                settle(report, record, "skipped", why, self.log)
                continue
            taken += 1
            outgoing = Outgoing(record, str(uuid.uuid4()), spreader.next_eta() if spreader else None, report.name)
            if report.dry_run:
                settle(report, record, "replayed", outgoing.task_id, self.log)
                continue
            if bucket is not None:
                wait_s = bucket.wait_s()
                if wait_s > 0:
                    if not self._flush():  # publish what is ready before sleeping
                        return
                    time.sleep(bucket.wait_s())
                bucket.take()
            self.pending.append(outgoing)
            if len(self.pending) >= self.batch and not self._flush():
                return
        self._flush(final=True)

    def _flush(self, *, final: bool = False) -> bool:
        """Publish the pending replays, then remove the confirmed ones; False when the run has to stop."""
        if self.pending:
            items, self.pending = self.pending, []
            for outgoing, error in zip(items, _publish_all(self.publish, items), strict=True):
                if error is None:
                    self.published.append(outgoing)
                else:  # broker down or refusing: the record stays
                    settle(self.report, outgoing.record, "failed", f"publish failed: {error}", self.log)
        if self.published and (final or len(self.published) >= self.batch):
            done, self.published = self.published, []
            try:
                self.source.remove([outgoing.record for outgoing in done])
            except _RemoveFailed as exc:
                for outgoing in done:
                    detail = f"published as {outgoing.task_id} but not deleted: {exc}"
                    settle(self.report, outgoing.record, "failed", detail, self.log)
                if exc.stop:
                    self.report.stopped = exc.stop
                    return False
            else:
                for outgoing in done:
                    settle(self.report, outgoing.record, "replayed", outgoing.task_id, self.log)
            if self.on_progress is not None:
                self.on_progress(self.report)
        return True


def _publish_all(publish: Publisher, items: list[Outgoing]) -> list[BaseException | None]:
    many = getattr(publish, "publish_many", None)
    if many is not None:
        return list(many(items))
    errors: list[BaseException | None] = []
    for item in items:
        options: dict[str, Any] = {}
        if item.eta is not None:
            options["eta"] = item.eta
        if item.name:
            options["name"] = item.name
        try:
            publish(item.record, item.task_id, **options)
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors


def _describe(store: Any) -> str:
    describe = getattr(store, "describe", None)
    return str(describe()) if describe is not None else type(store).__name__


# --- publishers ----------------------------------------------------------------------------------------


def replay_headers(record: DeadLetter, name: str | None = None) -> dict[str, str]:
    """Headers of a replayed task: a link back to the dead record it was made from, and the incident label."""
    headers = {REPLAY_OF_HEADER: f"{record.id or '?'} {record.task_id or '?'}"}
    if name:
        headers[NAME_HEADER] = name
    return headers


def publish_options(
    record: DeadLetter, task_id: str, *, queue: str | None = None, eta: float | None = None, name: str | None = None
) -> dict[str, Any]:
    """``send_task`` options for one replay: the record's canvas and headers, the replay's own headers, the queue."""
    import datetime as dt

    options = send_options(record)
    options["task_id"] = task_id
    options["headers"] = {**options["headers"], **replay_headers(record, name)}
    if queue or record.queue:
        options["queue"] = queue or record.queue
    if eta is not None:
        options["eta"] = dt.datetime.fromtimestamp(eta, tz=dt.timezone.utc)
    return options


class celery_publisher:
    """Publish through a Celery app (``send_task``), which returns only after the broker took the message.

    One producer (one connection) is held for the whole replay instead of one
    pool round trip per record; :meth:`close` gives it back.
    """

    def __init__(self, app: Any, queue: str | None = None) -> None:
        self.app = app
        self.queue = queue  # publish to this queue instead of the one the task failed on
        self._producer: Any = None

    def __call__(self, record: DeadLetter, task_id: str, *, eta: float | None = None, name: str | None = None) -> None:
        options = publish_options(record, task_id, queue=self.queue, eta=eta, name=name)
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


# --- the older entry points ------------------------------------------------------------------------------


def replay(
    store: DeadLetterStore,
    records: Iterable[DeadLetter],
    publish: Callable[..., None],
    *,
    dry_run: bool = False,
    batch: int = 1,
    allow_redacted: bool = False,
    **options: Any,
) -> ReplayReport:
    """Replay these ``records`` of ``store`` (see :func:`replay_dead_letters` for the options)."""
    return replay_dead_letters(
        store, publish, records=records, dry_run=dry_run, batch=batch, allow_redacted=allow_redacted, **options
    )


def purge(store: DeadLetterStore, flt: Filter) -> int:
    """Delete the matching records; returns how many were deleted."""
    deleted = 0
    for record in list(store.iter(flt)):
        if record.id and store.delete(record.id):
            deleted += 1
    return deleted
