"""Dead letters: the record, the Redis stream store, and safe replay/purge.

from celery_policy.deadletter import Filter, RedisStreamStore, replay, celery_publisher

store = RedisStreamStore("redis://localhost:6379/0", "celery-policy:dead")
records = list(store.iter(Filter(task="orders.*", reason="exhausted")))
report = replay(store, records, celery_publisher(app))   # deletes each record after its publish
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_policy.deadletter.record import DeadLetter
    from celery_policy.deadletter.replay import ReplayReport, celery_publisher, purge, replay
    from celery_policy.deadletter.store import DeadLetterStore, Filter, RedisStreamStore, StoreUnavailableError

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "Filter",
    "RedisStreamStore",
    "ReplayReport",
    "StoreUnavailableError",
    "celery_publisher",
    "purge",
    "replay",
]

# Imported on first use: the store imports redis, and `celery-policy check` reads the
# record's reasons (deadletter/record.py) without paying for a broker client.
_HOME = {
    "DeadLetter": "record",
    "ReplayReport": "replay",
    "celery_publisher": "replay",
    "purge": "replay",
    "replay": "replay",
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
