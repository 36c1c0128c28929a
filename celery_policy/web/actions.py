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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.replay import ReplayReport, celery_publisher, replay
from celery_policy.deadletter.store import Filter, RedisStreamStore
from celery_policy.metrics import REPLAYED

logger = structlog.get_logger("celery_policy")
ACTIVITY_KEEP = 500


def replay_records(store: RedisStreamStore, records: Sequence[DeadLetter], app: Any) -> ReplayReport:
    """Re-publish ``records`` through ``app`` with new task ids; each is deleted after its publish returned.

    The one place the console calls the replay API.
    """
    return replay(store, records, celery_publisher(app))


def matching(store: RedisStreamStore, flt: Filter, limit: int | None = None) -> list[DeadLetter]:
    """The records a filter selects now (what a dry run counts and a confirmed action acts on)."""
    return list(store.iter(flt, limit=limit))


def purge_records(store: RedisStreamStore, records: Sequence[DeadLetter]) -> int:
    ids = [r.id for r in records if r.id]
    return store.delete_many(ids) if ids else 0


def count_replays(
    inc: Callable[[Any, tuple[str, ...]], None], records: Sequence[DeadLetter], report: ReplayReport
) -> None:
    """``celery_policy_replayed_total{task,outcome}`` for one replay report."""
    tasks = {r.id: r.task for r in records}
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
