"""Dead letters: the record, the Redis stream store, and safe replay/purge.

from celery_policy.deadletter import Filter, RedisStreamStore, celery_publisher, group_counts, replay_dead_letters

store = RedisStreamStore("redis://localhost:6379/0", "celery-policy:dead")
rows = group_counts(store.iter(Filter(since_s=3600)), by=("task", "reason", "exception"))
report = replay_dead_letters(store, celery_publisher(app), Filter(task="orders.*"), rate="200/s", name="INC-42")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_policy.deadletter.record import DeadLetter
    from celery_policy.deadletter.replay import ReplayReport, celery_publisher, purge, replay, replay_dead_letters
    from celery_policy.deadletter.stats import group_counts
    from celery_policy.deadletter.store import DeadLetterStore, Filter, RedisStreamStore, StoreUnavailableError

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "Filter",
    "RedisStreamStore",
    "ReplayReport",
    "StoreUnavailableError",
    "celery_publisher",
    "group_counts",
    "purge",
    "replay",
    "replay_dead_letters",
]

# Imported on first use: the store imports redis, and `celery-policy check` reads the
# record's reasons (deadletter/record.py) without paying for a broker client.
_HOME = {
    "DeadLetter": "record",
    "ReplayReport": "replay",
    "celery_publisher": "replay",
    "purge": "replay",
    "replay": "replay",
    "replay_dead_letters": "replay",
    "group_counts": "stats",
    "DeadLetterStore": "store",
    "Filter": "store",
    "RedisStreamStore": "store",
    "StoreUnavailableError": "store",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        msg = f"module 'celery_policy.deadletter' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(f"celery_policy.deadletter.{module}"), name)
