"""The "db" of the failure-handling guide's ``ingest`` example (§13), kept in Redis so tests can script it.

``fail:<record_id>`` holds how many more fetches fail transiently (alternating
TimeoutError and ConnectionError); ids starting with ``missing`` have no
record. Every fetch appends the attempt to ``rt:journal:<record_id>``.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import current_task

_redis = redis.Redis.from_url(os.environ["RT_BROKER_URL"])


class PermanentError(Exception):
    pass


def fetch(record_id: str) -> dict[str, str] | None:
    request = current_task.request
    entry = {"t": time.time(), "retries": request.retries, "pid": os.getpid()}
    _redis.rpush(f"rt:journal:{record_id}", json.dumps(entry))
    left = _redis.decr(f"fail:{record_id}")
    if left >= 0:
        raise (TimeoutError if left % 2 else ConnectionError)(f"backend unavailable ({left} more)")
    return None if record_id.startswith("missing") else {"id": record_id}


def already_done(record_id: str) -> bool:
    return bool(_redis.sismember("done", record_id))


def mark_done(record_id: str) -> None:
    _redis.sadd("done", record_id)


def cleanup(record_id: str) -> None:
    _redis.rpush(f"cleanup:{record_id}", time.time())
