# kombu.utils.json is unannotated:
# mypy: disable-error-code="no-untyped-call"
"""Durable delayed delivery on the Redis broker: countdown messages wait in a sorted set, not in a worker.

Celery holds a countdown (or ETA) message unacked in the worker's memory until it is
due. With reliable fetch and ``worker.delayed_delivery`` on, the transport's publish
(:meth:`celery_policy.transport.redis.Channel._put`) sends a message whose ``eta``
header is at least ``delayed_min_delay`` seconds away (1 s by default) to
``celery-policy:delayed:<queue>`` instead: a sorted set scored by the due time, in
the broker's Redis, the member being the target list and the payload exactly as
kombu would have pushed it (headers, id, retry counters, priority list).

A retry the policy makes (and :func:`schedule_delayed`) also names the message being
retried: one Lua script then stores the retry *and* removes the failed attempt from
``unacked`` (the ack), so a crash can neither lose the retry nor run the attempt again
beside it. Celery's ack that follows finds nothing left to remove.

Every consuming process's heartbeat thread (:mod:`celery_policy.transport._liveness`)
moves due entries to the head of their queue list with one script (atomic, so any
number of workers can do it at once, each entry moves once). A message is never moved
before its due time; Celery still checks the ``eta`` itself when it arrives.

Who moves: a process that consumes through this transport with delayed delivery on,
for *every* queue listed in ``celery-policy:delayed-queues`` of its Redis database,
whether it consumes that queue or not. Producers, plain Celery/kombu workers and
celery-policy workers with ``worker.delayed_delivery: false`` move nothing; while none
of the first kind runs on that database, due entries wait (:func:`stuck` counts them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kombu.utils.json import dumps, loads

PREFIX = "celery-policy:delayed:"
QUEUES_KEY = "celery-policy:delayed-queues"
SEP = "\n"  # between the target list key and the payload in a member (JSON payloads have no raw newline)

# KEYS: the queue's delayed zset, the queues set, unacked hash, unacked_index zset, owner hash
# ARGV: due (epoch seconds), member, queue name, delivery tag to ack ("" = none), inflight key prefix
SCHEDULE_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then
  local owner = redis.call('HGET', KEYS[5], ARGV[4])
  redis.call('HDEL', KEYS[3], ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[4])
  if owner then
    redis.call('HDEL', KEYS[5], ARGV[4])
    local consumer = string.match(owner, '^([^\\n]*)')
    redis.call('SREM', ARGV[5] .. consumer, ARGV[4])
  end
end
return 1
"""

# KEYS: the queues set. ARGV: now (epoch seconds), batch size per queue, zset key prefix
MOVE_SCRIPT = """
local moved = 0
for _, queue in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[3] .. queue
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
  for _, member in ipairs(due) do
    local at = string.find(member, '\\n', 1, true)
    if at then
      redis.call('RPUSH', string.sub(member, 1, at - 1), string.sub(member, at + 1))
    end
    redis.call('ZREM', key, member)
    moved = moved + 1
  end
  if redis.call('EXISTS', key) == 0 then redis.call('SREM', KEYS[1], queue) end
end
return moved
"""

BATCH = 500
# A running mover takes an entry within one poll interval (0.5 s by default) of its due time; one this far past
# it has no mover: no celery-policy worker with delayed delivery consumes from this Redis database.
STUCK_AFTER_S = 5.0

_local = threading.local()


def delayed_key(queue: str) -> str:
    return PREFIX + queue


def eta_of(message: Mapping[str, Any]) -> float | None:
    """The due time (epoch seconds) of a Celery message's ``eta`` header, or None."""
    headers = message.get("headers")
    eta = headers.get("eta") if isinstance(headers, Mapping) else None
    if not eta or not isinstance(eta, str):
        return None
    try:
        when = dt.datetime.fromisoformat(eta.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp()  # naive: local time, as Celery reads it without a timezone


@contextlib.contextmanager
def acking(delivery_tag: str | None) -> Iterator[None]:
    """While inside, the next delayed publish of this thread also acks ``delivery_tag`` (same script)."""
    previous = getattr(_local, "ack_tag", None)
    _local.ack_tag = delivery_tag
    _local.stored = False
    try:
        yield
    finally:
        _local.ack_tag = previous


def take_ack_tag() -> str | None:
    """The tag :func:`acking` named, once (a second publish in the same block acks nothing)."""
    tag = getattr(_local, "ack_tag", None)
    _local.ack_tag = None
    return tag


def mark_stored() -> None:
    _local.stored = True


def was_stored() -> bool:
    """True when the last publish inside :func:`acking` went to the delayed set."""
    return bool(getattr(_local, "stored", False))


def member_for(list_key: str, payload: Mapping[str, Any]) -> str:
    return f"{list_key}{SEP}{dumps(payload)}"


def ack_tag_of(task: Any) -> str | None:
    """The delivery tag of the message ``task`` is running, when the ack is ours to make (late ack), else None."""
    if not getattr(task, "acks_late", False):
        return None  # acked when the worker accepted it
    properties = getattr(task.request, "properties", None) or {}
    tag = properties.get("delivery_tag") if isinstance(properties, Mapping) else None
    return str(tag) if tag else None


def schedule_delayed(task: Any, countdown_s: float, **options: Any) -> bool:
    """Publish the message ``task`` is running again, due in ``countdown_s`` seconds, with no retry spent.

    Call it from inside the task (a breaker's snooze, say), then raise ``celery.exceptions.Ignore()``.
    The copy keeps the task id, arguments, headers and ``retries``; ``options`` go to
    ``apply_async`` (``queue=``...). With delayed delivery on (Redis, reliable fetch) the copy
    waits in the broker's delayed set and, for a late-acked task, the running message is acked
    by the same script; returns True then. Otherwise it is an ordinary countdown publish
    (held by a worker until due) and returns False. Raises what the publish raises.
    """
    request = task.request
    signature = task.signature_from_request(
        request,
        request.args,
        request.kwargs,
        countdown=countdown_s,
        retries=int(request.retries or 0),
        **options,
    )
    with acking(ack_tag_of(task)):
        signature.apply_async()
        return was_stored()


@dataclass(frozen=True)
class DelayedEntry:
    """One message waiting in the delayed set."""

    queue: str
    due: float
    task: str | None
    task_id: str | None
    retries: int | None
    list_key: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def queues(client: Any) -> list[str]:
    """Queues with messages in the delayed set, sorted."""
    return sorted(_text(q) for q in client.smembers(QUEUES_KEY))


def counts(client: Any) -> dict[str, int]:
    """Delayed messages per queue."""
    names = queues(client)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zcard(delayed_key(name))
    return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True) if n}


def stuck(client: Any, older_than_s: float = STUCK_AFTER_S, now: float | None = None) -> dict[str, int]:
    """Per queue, the delayed messages more than ``older_than_s`` past their due time (none: not listed)."""
    limit = (time.time() if now is None else now) - older_than_s
    names = queues(client)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zcount(delayed_key(name), "-inf", limit)
    return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True) if n}


def stats(client: Any, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per queue: how many wait, how many are overdue, and the earliest and latest due time."""
    now = time.time() if now is None else now
    found: dict[str, dict[str, Any]] = {}
    for name in queues(client):
        key = delayed_key(name)
        total = int(client.zcard(key))
        if not total:
            continue
        first = client.zrange(key, 0, 0, withscores=True)
        last = client.zrange(key, -1, -1, withscores=True)
        found[name] = {
            "delayed": total,
            "overdue": int(client.zcount(key, "-inf", now)),
            "next_due": float(first[0][1]) if first else None,
            "last_due": float(last[0][1]) if last else None,
        }
    return found


def entries(client: Any, queue: str | None = None, limit: int = 50) -> list[DelayedEntry]:
    """The first ``limit`` delayed messages by due time (of ``queue``, or of every queue)."""
    found: list[DelayedEntry] = []
    for name in [queue] if queue else queues(client):
        for member, score in client.zrange(delayed_key(name), 0, max(0, limit - 1), withscores=True):
            list_key, _, raw = _text(member).partition(SEP)
            try:
                headers = loads(raw).get("headers") or {}
            except (ValueError, AttributeError):
                headers = {}
            retries = headers.get("retries")
            found.append(
                DelayedEntry(
                    queue=name,
                    due=float(score),
                    task=headers.get("task"),
                    task_id=headers.get("id"),
                    retries=int(retries) if isinstance(retries, int) else None,
                    list_key=list_key,
                )
            )
    found.sort(key=lambda entry: entry.due)
    return found[:limit]
