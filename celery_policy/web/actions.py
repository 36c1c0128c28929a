"""The console's destructive actions, replay and purge, and the activity log that records each of them.

Replays go through :func:`celery_policy.deadletter.replay.replay` (a record is
deleted only after its publish returned) from one function, :func:`replay_records`.
Every action is a structlog event ``web_action`` (who, action, filter, counts)
and an entry of the activity list kept in Redis next to the stream
(``<stream>:activity``, the newest 500), which ``/activity`` shows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.replay import ReplayReport, celery_publisher, replay
from celery_policy.deadletter.store import Filter, RedisStreamStore
from celery_policy.metrics import REPLAYED
from celery_policy.web.data import GroupKey, group_key

logger = structlog.get_logger("celery_policy")
ACTIVITY_KEEP = 500


def replay_records(
    store: RedisStreamStore,
    records: Iterable[DeadLetter],
    app: Any,
    *,
    spread: str | None = None,
    name: str | None = None,
) -> ReplayReport:
    """Re-publish ``records`` through ``app`` with new task ids; each is deleted after its publish returned.

    The one place the console calls the replay API. ``spread`` (a duration) gives the replays jittered
    ETAs over that window; ``name`` is the incident label sent in a header and in the replay's log events.
    A ``--rate`` limit is left to ``dlq replay``: it would hold the request open for the whole replay.
    """
    return replay(store, records, celery_publisher(app), spread=spread or None, name=name or None)


def count_matching(store: RedisStreamStore, flt: Filter) -> int:
    """How many records a filter selects now (the dry run); reads them in batches, keeps none."""
    return sum(1 for _ in store.iter(flt))


class Seen:
    """Records streamed from the store, remembered only as (task, group key) by entry id."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, GroupKey]] = {}

    def track(self, records: Iterable[DeadLetter]) -> Iterator[DeadLetter]:
        for record in records:
            if record.id:
                self.keys[record.id] = (record.task, group_key(record))
            yield record


def purge_matching(store: RedisStreamStore, flt: Filter, limit: int, seen: Seen, batch: int = 1000) -> int:
    """Delete the (at most ``limit``, oldest first) records ``flt`` selects, in batches; returns how many."""
    deleted = 0
    ids: list[str] = []
    for record in seen.track(store.iter(flt, limit=limit)):
        if record.id:
            ids.append(record.id)
        if len(ids) >= batch:
            deleted += store.delete_many(ids)
            ids = []
    return deleted + (store.delete_many(ids) if ids else 0)


def count_replays(inc: Callable[[Any, tuple[str, ...]], None], tasks: Mapping[str, str], report: ReplayReport) -> None:
    """``celery_policy_replayed_total{task,outcome}`` for one replay report (``tasks``: entry id -> task)."""
    for outcome, entries in (("published", report.replayed), ("failed", report.failed), ("skipped", report.skipped)):
        for entry, _ in entries:
            inc(REPLAYED, (tasks.get(entry, "?"), outcome))


@dataclass(frozen=True)
class Activity:
    at: float
    who: str
    action: str
    filter: dict[str, Any]
    count: int
    detail: str = ""


class ActivityLog:
    def __init__(self, store: RedisStreamStore) -> None:
        self.store = store
        self.key = f"{store.stream}:activity"

    def record(self, who: str, action: str, flt: dict[str, Any], count: int, detail: str = "") -> Activity:
        entry = Activity(time.time(), who, action, flt, count, detail)
        logger.warning("web_action", who=who, action=action, filter=flt, count=count, detail=detail)
        try:
            pipe = self.store.client.pipeline()
            pipe.lpush(self.key, json.dumps(entry.__dict__))
            pipe.ltrim(self.key, 0, ACTIVITY_KEEP - 1)
            pipe.execute()
        except Exception as exc:  # the action happened; the structlog event above still records it
            logger.error("web_activity_not_stored", error=str(exc))
        return entry

    def recent(self, limit: int = 100) -> list[Activity]:
        try:
            raw = self.store.client.lrange(self.key, 0, limit - 1)
        except Exception:
            return []
        found = []
        for item in raw:
            try:
                found.append(Activity(**json.loads(item)))
            except (ValueError, TypeError):
                continue
        return found
