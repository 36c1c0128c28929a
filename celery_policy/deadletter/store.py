"""The dead-letter store: a Redis stream, capped with approximate trimming."""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from celery_policy.deadletter.record import DeadLetter
from celery_policy.redis_urls import RedisClient, client_from_url, safe_url

_FIELD = "record"
_ENTRY_ID = re.compile(r"\d+(-\d+)?")  # what XRANGE/XDEL accept; anything else is a typo, not an outage


_MARKER_TTL_S = 7 * 86400
_ADD_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'record', ARGV[2])
end
return false
"""


def _slot_tag(stream: str) -> str:
    """A key prefix in the stream's Redis Cluster hash slot: the stream's own ``{tag}`` or ``{stream}``."""
    start = stream.find("{")
    end = stream.find("}", start + 1)
    if start != -1 and end > start + 1:
        return stream[start : end + 1]
    return "{" + stream + "}"


class StoreUnavailableError(Exception):
    """The dead-letter store could not be reached."""


@dataclass(frozen=True, slots=True)
class Filter:
    task: str | None = None  # glob
    reason: str | None = None
    since_s: float | None = None  # only records younger than this
    ids: tuple[str, ...] = ()

    def matches(self, record: DeadLetter) -> bool:
        if self.ids and record.id not in self.ids:
            return False
        if self.task and not fnmatch.fnmatchcase(record.task, self.task):
            return False
        if self.reason and record.reason != self.reason:
            return False
        return not (self.since_s is not None and record.last_failure < time.time() - self.since_s)


class DeadLetterStore(Protocol):
    def add(self, record: DeadLetter) -> str: ...
    def iter(self, flt: Filter, limit: int | None = None) -> Iterator[DeadLetter]: ...
    def delete(self, entry_id: str) -> bool: ...
    def count(self) -> int: ...


class RedisStreamStore:
    """Records in one Redis stream (``XADD ... MAXLEN ~ max_length``)."""

    def __init__(self, url: str, stream: str = "celery-policy:dead", max_length: int = 100_000) -> None:
        self.url = url
        self.stream = stream
        self.max_length = max_length
        self._client: RedisClient | None = None
        self._script: Any = None

    @property
    def client(self) -> RedisClient:
        """redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// (see celery_policy.redis_urls)."""
        if self._client is None:
            self._client = client_from_url(self.url, socket_connect_timeout=5, socket_timeout=10)
        return self._client

    def add(self, record: DeadLetter) -> str:
        """Append one record; returns its entry id, or "" when this failure was already recorded.

        A worker killed after the write and before the ack gets the message again and
        would write the same failure twice; a marker keyed by (task id, attempt, reason),
        set in the same script as the XADD and in the stream's hash slot, makes the
        write happen once.
        """
        payload = record.model_dump_json(exclude={"id"})
        try:
            if record.task_id:
                marker = f"{_slot_tag(self.stream)}:recorded:{record.task_id}:{record.attempts}:{record.reason}"
                entry = self._add_once(keys=[marker, self.stream], args=[self.max_length, payload, _MARKER_TTL_S])
                if entry is None:
                    return ""
            else:
                entry = self.client.xadd(self.stream, {_FIELD: payload}, maxlen=self.max_length, approximate=True)
        except redis.RedisError as exc:
            msg = f"dead-letter store {self.describe()} unavailable: {exc}"
            raise StoreUnavailableError(msg) from exc
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    @property
    def _add_once(self) -> Any:
        if self._script is None:
            self._script = self.client.register_script(_ADD_ONCE)
        return self._script

    def iter(self, flt: Filter, limit: int | None = None, batch: int = 1000) -> Iterator[DeadLetter]:
        """Records oldest first, filtered; reads in batches so huge streams stream."""
        found = 0
        if flt.ids:
            for entry_id in flt.ids:
                if not _ENTRY_ID.fullmatch(entry_id):
                    continue
                for raw_id, fields in self._xrange(entry_id, entry_id, 1):
                    record = _decode(raw_id, fields)
                    if record is not None and flt.matches(record):
                        yield record
            return
        start = "-"
        if flt.since_s is not None:
            start = f"{int((time.time() - flt.since_s) * 1000)}-0"
        while True:
            rows = self._xrange(start, "+", batch)
            for raw_id, fields in rows:
                record = _decode(raw_id, fields)
                if record is not None and flt.matches(record):
                    yield record
                    found += 1
                    if limit is not None and found >= limit:
                        return
            if len(rows) < batch:
                return
            last = rows[-1][0]
            last_id = last.decode() if isinstance(last, bytes) else str(last)
            start = "(" + last_id

    def _xrange(self, start: str, end: str, count: int) -> list[Any]:
        try:
            return list(self.client.xrange(self.stream, min=start, max=end, count=count) or ())
        except redis.RedisError as exc:
            msg = f"dead-letter store {self.describe()} unavailable: {exc}"
            raise StoreUnavailableError(msg) from exc

    def delete(self, entry_id: str) -> bool:
        if not _ENTRY_ID.fullmatch(entry_id):
            return False
        try:
            return bool(self.client.xdel(self.stream, entry_id))
        except redis.RedisError as exc:
            msg = f"dead-letter store {self.describe()} unavailable: {exc}"
            raise StoreUnavailableError(msg) from exc

    def delete_many(self, entry_ids: list[str]) -> int:
        """Delete several records in one round trip; returns how many existed."""
        try:
            return int(self.client.xdel(self.stream, *entry_ids)) if entry_ids else 0
        except redis.RedisError as exc:
            msg = f"dead-letter store {self.describe()} unavailable: {exc}"
            raise StoreUnavailableError(msg) from exc

    def count(self) -> int:
        try:
            return int(self.client.xlen(self.stream))
        except redis.RedisError as exc:
            msg = f"dead-letter store {self.describe()} unavailable: {exc}"
            raise StoreUnavailableError(msg) from exc

    def describe(self) -> str:
        return f"{_safe_url(self.url)} stream '{self.stream}'"


def _decode(raw_id: Any, fields: Any) -> DeadLetter | None:
    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    payload = fields.get(_FIELD.encode()) or fields.get(_FIELD)
    if payload is None:
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    data["id"] = entry_id
    return DeadLetter.model_validate(data)


def _safe_url(url: str) -> str:
    """Hide a password in a URL shown to users."""
    return safe_url(url)


def store_url_for(configured: str | None, broker_url: str | None) -> str | None:
    """The store URL: the configured one, else the broker's when the broker is Redis."""
    if configured:
        return configured
    if broker_url and broker_url.split("://", 1)[0] in {"redis", "rediss"}:
        return broker_url
    return None
