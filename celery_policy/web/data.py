"""What the console reads from the dead-letter store: pages of records, and groups by task, reason,
exception and hour.

A page reads the stream newest first (``XREVRANGE``) and stops once it has a
page: the first page of 100,000 records costs one or two round trips.

The groups come from :class:`GroupIndex`: counts only (no arguments, no
tracebacks), built once by reading the stream in batches in a background
thread, then kept current by reading only the entries newer than the last one
seen. Records the console itself deletes are subtracted; when the stream's
length says someone else deleted or trimmed records, the index is rebuilt.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter, RedisStreamStore, StoreUnavailableError, _decode

GroupKey = tuple[str, str, str, int]  # task, reason, exception type, hour (epoch seconds of its start)
PAGE_SIZE = 50
SCAN_LIMIT = 20_000  # entries one page may read looking for matches before offering "older"


@dataclass(frozen=True, slots=True)
class Page:
    records: list[DeadLetter]
    older: str | None  # the cursor of the next page (an entry id), None at the end
    scanned: int


def read_page(store: RedisStreamStore, flt: Filter, before: str | None = None, size: int = PAGE_SIZE) -> Page:
    """The newest ``size`` records matching ``flt`` older than entry ``before``. Raises StoreUnavailableError."""
    high = f"({before}" if before else "+"
    low = "-" if flt.since_s is None else f"{int((time.time() - flt.since_s) * 1000)}-0"
    found: list[DeadLetter] = []
    scanned = 0
    batch = max(size * 2, 200)
    while scanned < SCAN_LIMIT:
        rows = _xrevrange(store, high, low, batch)
        for raw_id, fields in rows:
            scanned += 1
            record = _decode(raw_id, fields)
            if record is not None and flt.matches(record):
                found.append(record)
                if len(found) == size:
                    return Page(found, record.id, scanned)
        if len(rows) < batch:
            return Page(found, None, scanned)
        last = rows[-1][0]
        high = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    return Page(found, high[1:], scanned)


def read_record(store: RedisStreamStore, entry_id: str) -> DeadLetter | None:
    found = list(store.iter(Filter(ids=(entry_id,))))
    return found[0] if found else None


def _xrevrange(store: RedisStreamStore, high: str, low: str, count: int) -> list[Any]:
    try:
        return list(store.client.xrevrange(store.stream, max=high, min=low, count=count) or ())
    except Exception as exc:
        msg = f"dead-letter store {store.describe()} unavailable: {exc}"
        raise StoreUnavailableError(msg) from exc


def group_key(record: DeadLetter) -> GroupKey:
    return (record.task, record.reason, record.exc_type, int(record.last_failure // 3600 * 3600))


def _key_of(payload: Any) -> GroupKey | None:
    try:
        data = json.loads(payload)
        return (str(data["task"]), str(data["reason"]), str(data["exc_type"]), int(data["last_failure"] // 3600 * 3600))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class Group:
    task: str
    reason: str
    exc_type: str
    hour: int
    count: int


@dataclass(frozen=True, slots=True)
class GroupView:
    groups: list[Group]  # largest first
    hours: list[tuple[int, int]]  # (hour, count), oldest first
    total: int
    complete: bool  # False while the first build runs
    indexed: int
    stream_length: int


class GroupIndex:
    """Counts per (task, reason, exception, hour) of one stream; see the module docstring."""

    def __init__(self, store: RedisStreamStore, batch: int = 2000, refresh_every_s: float = 2.0) -> None:
        self.store = store
        self.batch = batch
        self.refresh_every_s = refresh_every_s
        self._lock = threading.Lock()
        self._counts: dict[GroupKey, int] = {}
        self._last_id = "0-0"
        self._indexed = 0
        self._complete = False
        self._length = 0
        self._refreshed = 0.0
        self._building: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> None:
        """Build in a background thread (once at a time)."""
        with self._lock:
            if self._building is not None and self._building.is_alive():
                return
            self._building = threading.Thread(target=self._build, name="celery-policy-web-index", daemon=True)
            self._building.start()

    def _build(self) -> None:
        counts: dict[GroupKey, int] = {}
        last = "0-0"
        indexed = 0
        try:
            for entry_id, key in self._read_after(last):
                last = entry_id
                indexed += 1
                if key is not None:
                    counts[key] = counts.get(key, 0) + 1
                if indexed % (self.batch * 5) == 0:
                    with self._lock:  # progress for the page while the build runs
                        self._indexed = indexed
            length = self._xlen()
        except StoreUnavailableError as exc:
            self.error = str(exc)
            return
        with self._lock:
            self._counts, self._last_id, self._indexed, self._length = counts, last, indexed, length
            self._complete = True
            self._refreshed = time.monotonic()
            self.error = None

    def _read_after(self, last: str) -> Iterator[tuple[str, GroupKey | None]]:
        start = f"({last}" if last != "0-0" else "-"
        while True:
            try:
                rows = list(self.store.client.xrange(self.store.stream, min=start, max="+", count=self.batch) or ())
            except Exception as exc:
                msg = f"dead-letter store {self.store.describe()} unavailable: {exc}"
                raise StoreUnavailableError(msg) from exc
            for raw_id, fields in rows:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                payload = (fields or {}).get(b"record") or (fields or {}).get("record")
                yield entry_id, (_key_of(payload) if payload is not None else None)
            if len(rows) < self.batch:
                return
            last_row = rows[-1][0]
            start = "(" + (last_row.decode() if isinstance(last_row, bytes) else str(last_row))

    def _xlen(self) -> int:
        try:
            return int(self.store.client.xlen(self.store.stream))
        except Exception as exc:
            msg = f"dead-letter store {self.store.describe()} unavailable: {exc}"
            raise StoreUnavailableError(msg) from exc

    def refresh(self) -> None:
        """Read entries added since the last look; rebuild when records vanished behind the console's back."""
        with self._lock:
            if not self._complete or time.monotonic() - self._refreshed < self.refresh_every_s:
                return
            last, indexed = self._last_id, self._indexed
        added: dict[GroupKey, int] = {}
        count = 0
        for entry_id, key in self._read_after(last):
            last = entry_id
            count += 1
            if key is not None:
                added[key] = added.get(key, 0) + 1
        length = self._xlen()
        with self._lock:
            for key, n in added.items():
                self._counts[key] = self._counts.get(key, 0) + n
            self._last_id, self._indexed, self._length = last, indexed + count, length
            self._refreshed = time.monotonic()
            stale = length < self._indexed  # more is only new entries, read on the next look
        if stale:  # deleted by the CLI or another console, or trimmed by MAXLEN: count again
            with self._lock:
                self._complete = False
            self.start()

    def forget(self, keys: Iterable[GroupKey]) -> None:
        """Subtract records the console deleted (replayed or purged), by their group keys."""
        with self._lock:
            for key in keys:
                left = self._counts.get(key, 0) - 1
                if left > 0:
                    self._counts[key] = left
                else:
                    self._counts.pop(key, None)
                self._indexed -= 1
                self._length -= 1

    def view(self, flt: Filter) -> GroupView:
        with self._lock:
            counts = dict(self._counts)
            complete, indexed, length = self._complete, self._indexed, self._length
        since = time.time() - flt.since_s if flt.since_s is not None else None
        groups = [
            Group(task, reason, exc, hour, n)
            for (task, reason, exc, hour), n in counts.items()
            if (not flt.task or fnmatch.fnmatchcase(task, flt.task))
            and (not flt.reason or reason == flt.reason)
            and (since is None or hour + 3600 > since)
        ]
        groups.sort(key=lambda g: (-g.count, -g.hour, g.task, g.reason, g.exc_type))
        hours: dict[int, int] = {}
        for group in groups:
            hours[group.hour] = hours.get(group.hour, 0) + group.count
        return GroupView(groups, sorted(hours.items()), sum(g.count for g in groups), complete, indexed, length)

    def totals(self) -> dict[tuple[str, str], int]:
        """Records by (task, reason): the store gauges of ``/metrics``."""
        with self._lock:
            counts = dict(self._counts)
        found: dict[tuple[str, str], int] = {}
        for (task, reason, _, _), n in counts.items():
            found[(task, reason)] = found.get((task, reason), 0) + n
        return found
