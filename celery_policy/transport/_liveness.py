# kombu.utils.json is unannotated:
# mypy: disable-error-code="no-untyped-call"
"""Consumer liveness for reliable fetch: a heartbeat key per process and recovery of dead consumers.

Every consuming process has a consumer id. Its heartbeat thread keeps
``celery-policy:rf:alive:<id>`` alive with a TTL and lists the id in
``celery-policy:rf:consumers``. Each message a consumer takes is recorded
(by the take script, atomically with the pop) in ``celery-policy:rf:owner``
(tag -> "<id>\\n<source list>") and ``celery-policy:rf:inflight:<id>``.

The same thread sweeps the other consumers: one whose heartbeat key has been
missing for longer than the TTL on two looks (so a Redis restart, after which
the live ones beat again within one interval, does not count) is dead, and
each message it still owns is pushed back onto the head of the list it came
from, marked redelivered, by one Lua script that checks ownership and the
unacked entry first (so a message restored by kombu's visibility timeout and
taken by someone else is never restored twice).

A thread, not the event loop: with the solo pool a long task blocks the loop,
and a heartbeat that stopped for it would get a live worker's messages run twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

import redis
from kombu.utils.json import dumps, loads

logger = logging.getLogger("celery_policy.transport")

PREFIX = "celery-policy:rf:"
CONSUMERS_KEY = PREFIX + "consumers"
OWNER_KEY = PREFIX + "owner"

# KEYS: unacked hash, unacked_index zset, owner hash, target list
# ARGV: tag, expected owner value, expected unacked entry ("" = expect none), payload to push
RECOVER_SCRIPT = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '' then
  if not entry then redis.call('HDEL', KEYS[3], ARGV[1]) end
  return 0
end
if entry ~= ARGV[3] then return 0 end
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


def alive_key(consumer_id: str) -> str:
    return f"{PREFIX}alive:{consumer_id}"


def inflight_key(consumer_id: str) -> str:
    return f"{PREFIX}inflight:{consumer_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def redelivered_payload(entry: bytes) -> tuple[str, bytes] | None:
    """From an ``unacked`` entry ``[payload, exchange, routing_key]``: the payload marked redelivered, as kombu does."""
    try:
        payload = loads(entry)[0]
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    with contextlib.suppress(KeyError, TypeError):
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
    return dumps(payload), entry


class Liveness:
    """One per consuming process and broker: the consumer id, its heartbeat thread and the recovery sweep."""

    def __init__(
        self,
        params: dict[str, Any],
        *,
        unacked_key: str,
        unacked_index_key: str,
        interval_s: float,
        ttl_s: float,
        recover_interval_s: float,
    ) -> None:
        self.pid = os.getpid()
        self.consumer_id = f"{socket.gethostname()}:{self.pid}:{secrets.token_hex(4)}"
        self.unacked_key = unacked_key
        self.unacked_index_key = unacked_index_key
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.recover_interval_s = recover_interval_s
        params = dict(params)
        # A heartbeat must never hang on a half-open socket.
        params["socket_timeout"] = max(2.0, interval_s)
        params["socket_connect_timeout"] = max(2.0, interval_s)
        params.pop("health_check_interval", None)
        self.client: redis.Redis = redis.Redis(connection_pool=redis.ConnectionPool(**params))
        self._recover = self.client.register_script(RECOVER_SCRIPT)
        self._missing_since: dict[str, float] = {}
        self._started = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive_key(self) -> str:
        return alive_key(self.consumer_id)

    @property
    def inflight_key(self) -> str:
        return inflight_key(self.consumer_id)

    def ensure_started(self) -> None:
        """Register (synchronously, before the first take) and start the heartbeat thread once."""
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            self.beat()
            self._thread = threading.Thread(target=self._run, name="celery-policy-heartbeat", daemon=True)
            self._thread.start()
            self._started = True

    def beat(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.alive_key, self.pid, px=int(self.ttl_s * 1000))
        pipe.sadd(CONSUMERS_KEY, self.consumer_id)
        pipe.execute()

    def stop(self) -> None:
        """Stop beating and drop the heartbeat key so peers recover what is left at once (tests, shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.alive_key)

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.recover_interval_s
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.recover_interval_s
                    self.sweep()
            except redis.RedisError as exc:
                logger.debug("reliable fetch heartbeat: %s", exc)
            except Exception:  # the thread must outlive anything unexpected
                logger.exception("reliable fetch heartbeat failed")

    def sweep(self) -> int:
        """Recover the messages of consumers whose heartbeat is gone; return how many were pushed back."""
        now = time.monotonic()
        restored = 0
        members = [_text(m) for m in self.client.smembers(CONSUMERS_KEY)]
        if not members:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.exists(alive_key(member))
        present = pipe.execute()
        for member, exists in zip(members, present, strict=True):
            if member == self.consumer_id or exists:
                self._missing_since.pop(member, None)
                continue
            first = self._missing_since.setdefault(member, now)
            if now - first >= self.ttl_s:
                restored += self.recover(member)
                self._missing_since.pop(member, None)
        return restored

    def recover(self, consumer_id: str) -> int:
        """Push every message ``consumer_id`` still owns back onto the list it was taken from."""
        restored = 0
        key = inflight_key(consumer_id)
        for tag in self.client.smembers(key):
            owner = self.client.hget(OWNER_KEY, tag)
            if owner is None:
                continue
            owner_id, _, source = _text(owner).partition("\n")
            if owner_id != consumer_id:
                continue
            keys = [self.unacked_key, self.unacked_index_key, OWNER_KEY, source]
            entry = self.client.hget(self.unacked_key, tag)
            if entry is None:
                self._recover(keys=keys, args=[tag, owner, "", ""])
                continue
            marked = redelivered_payload(entry if isinstance(entry, bytes) else entry.encode())
            if marked is None:
                continue
            payload, expected = marked
            restored += int(self._recover(keys=keys, args=[tag, owner, expected, payload]))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(CONSUMERS_KEY, consumer_id)
        pipe.execute()
        if restored:
            logger.warning("reliable fetch: restored %d message(s) of dead consumer %s", restored, consumer_id)
        return restored


_BY_BROKER: dict[tuple[Any, ...], Liveness] = {}
_BY_BROKER_LOCK = threading.Lock()


def liveness_for(params: dict[str, Any], **options: Any) -> Liveness:
    """The process's :class:`Liveness` for this broker (a new one after a fork)."""
    key = (params.get("host"), params.get("port"), params.get("db"), params.get("path"))
    with _BY_BROKER_LOCK:
        found = _BY_BROKER.get(key)
        if found is None or found.pid != os.getpid():
            found = Liveness(params, **options)
            _BY_BROKER[key] = found
        return found
