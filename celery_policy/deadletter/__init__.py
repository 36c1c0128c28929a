"""Dead letters: the record, the Redis stream store, and safe replay/purge.

from celery_policy.deadletter import Filter, RedisStreamStore, replay, celery_publisher

store = RedisStreamStore("redis://localhost:6379/0", "celery-policy:dead")
records = list(store.iter(Filter(task="orders.*", reason="exhausted")))
report = replay(store, records, celery_publisher(app))   # deletes each record after its publish
"""

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
