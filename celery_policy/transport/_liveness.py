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

Leases. kombu restores any unacked message whose ``unacked_index`` score (the
time it was delivered) is older than the visibility timeout, whether or not its
consumer is alive. The same thread renews the lease of every message this
process still holds (in the delivered set of one of its open channels): it
moves that message's score to now, ``ZADD XX``, at least four times per
visibility timeout. So no visibility-timeout sweep, ours or the one kombu runs
in any consumer on the same Redis, ever sees a held message as old. What the
process no longer holds (a closed channel's leftovers, a bug) stops being
renewed and comes back through the visibility timeout as before; what a dead
process held comes back through the recovery above, within the heartbeat TTL.
Messages in ``unacked`` with no owner record were taken by a consumer that is
not ours (plain kombu's BRPOP); nothing renews them, the visibility timeout is
their only bound.

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
import weakref
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
        lease_interval_s: float | None = None,
    ) -> None:
        self.pid = os.getpid()
        self.consumer_id = f"{socket.gethostname()}:{self.pid}:{secrets.token_hex(4)}"
        self.unacked_key = unacked_key
        self.unacked_index_key = unacked_index_key
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.recover_interval_s = recover_interval_s
        self.lease_interval_s = interval_s if lease_interval_s is None else min(lease_interval_s, interval_s)
        self._renewed_at = 0.0  # monotonic time of the last lease renewal
        self._periodic: list[tuple[float, Any]] = []  # (interval_s, job): see add_periodic
        params = dict(params)
        # A heartbeat must never hang on a half-open socket.
        params["socket_timeout"] = max(2.0, interval_s)
        params["socket_connect_timeout"] = max(2.0, interval_s)
        params.pop("health_check_interval", None)
        self.client: redis.Redis = redis.Redis(connection_pool=redis.ConnectionPool(**params))
        self._recover = self.client.register_script(RECOVER_SCRIPT)
        self._move: Any = None
        self.noted_delayed_off = False  # basic_consume said once that this process moves no delayed messages
        self._missing_since: dict[str, float] = {}
        self._orphans: dict[str, float] = {}  # tag -> when it may be given back (see give_back_later)
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()  # this process's taking channels
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

    def use_lease_interval(self, visibility_timeout_s: float) -> None:
        """Renew leases often enough for a channel with this visibility timeout (four times per timeout)."""
        self.lease_interval_s = max(0.05, min(self.lease_interval_s, float(visibility_timeout_s) / 4.0))

    def add_periodic(self, interval_s: float, job: Any) -> bool:
        """Run ``job()`` from the heartbeat thread about every ``interval_s`` seconds (once per job); True if new."""
        with self._lock:
            if any(existing == job for _, existing in self._periodic):  # bound methods compare equal
                return False
            self._periodic.append((max(0.05, float(interval_s)), job))
            return True

    def _tick_s(self) -> float:
        return float(min(self.interval_s, self.lease_interval_s, *(interval for interval, _ in self._periodic)))

    def _run(self) -> None:
        now = time.monotonic()
        next_beat = now + self.interval_s
        next_sweep = now + self.recover_interval_s
        next_jobs: dict[int, float] = {}
        while not self._stop.wait(self._tick_s()):
            try:
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.interval_s
                    self.beat()
                    if self._orphans:
                        self.give_back_due()
                if now - self._renewed_at >= self.lease_interval_s:
                    self.renew_leases()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.recover_interval_s
                    self.sweep()
                for index, (interval, job) in enumerate(list(self._periodic)):
                    if time.monotonic() >= next_jobs.get(index, 0.0):
                        next_jobs[index] = time.monotonic() + interval
                        job()
            except redis.RedisError as exc:
                logger.debug("reliable fetch heartbeat: %s", exc)
            except Exception:  # the thread must outlive anything unexpected
                logger.exception("reliable fetch heartbeat failed")

    # -- delayed delivery (celery_policy.transport.delayed) ----------------------------------------

    def move_due(self) -> int:
        """Move the delayed messages that are due to the head of their queue lists; return how many."""
        from celery_policy.transport import delayed

        if self._move is None:
            self._move = self.client.register_script(delayed.MOVE_SCRIPT)
        moved = total = int(self._move(keys=[delayed.QUEUES_KEY], args=[time.time(), delayed.BATCH, delayed.PREFIX]))
        while moved >= delayed.BATCH:  # a backlog (workers were down): keep going, one batch per queue at a time
            moved = int(self._move(keys=[delayed.QUEUES_KEY], args=[time.time(), delayed.BATCH, delayed.PREFIX]))
            total += moved
        return total

    # -- leases ------------------------------------------------------------------------------------

    def held_tags(self) -> list[str]:
        """Delivery tags this process holds unacked, in the open channels that take messages."""
        held: list[str] = []
        for channel in list(self._channels):
            qos = getattr(channel, "_qos", None)
            if getattr(channel, "closed", True) or qos is None:
                continue
            for _ in range(3):  # the consumer thread may add or ack while we copy
                try:
                    held.extend(str(tag) for tag in list(qos._delivered))
                    break
                except RuntimeError:
                    continue
        return held

    def renew_leases(self) -> int:
        """Move the ``unacked_index`` score of every message this process holds to now; return how many.

        ``ZADD XX`` touches only entries still there: a message acked or restored meanwhile is not re-added.
        """
        self._renewed_at = time.monotonic()
        tags = self.held_tags()
        if not tags:
            return 0
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(tags), 1000):
            pipe.zadd(self.unacked_index_key, dict.fromkeys(tags[start : start + 1000], now), xx=True)
        pipe.execute()
        return len(tags)

    def renew_if_stale(self) -> None:
        """Before a visibility-timeout sweep in this process: renew now unless the thread did it recently."""
        if self._started and time.monotonic() - self._renewed_at >= self.lease_interval_s / 2:
            with contextlib.suppress(redis.RedisError):
                self.renew_leases()

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
        key = inflight_key(consumer_id)
        restored = sum(self._give_back(_text(tag), consumer_id) for tag in self.client.smembers(key))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(CONSUMERS_KEY, consumer_id)
        pipe.execute()
        if restored:
            logger.warning("reliable fetch: restored %d message(s) of dead consumer %s", restored, consumer_id)
        return restored

    def give_back_later(self, tags: list[str]) -> None:
        """Messages a closed channel of this process took and never acked: push them back after the TTL.

        When the broker connection is lost, kombu gives a closing channel's unacked messages back only if
        the broker answers at that moment (``restore_unacked``). After a broker restart it does not, and the
        messages stay in ``unacked`` under this live consumer, so no peer recovers them: they would wait for
        the visibility timeout (1 h by default). The heartbeat thread gives them back instead, once the TTL
        has passed, the grace a peer gives a dead consumer (an ack that still arrives makes it a no-op).
        """
        due = time.monotonic() + self.ttl_s
        with self._lock:
            for tag in tags:
                self._orphans.setdefault(tag, due)

    def gives_back_later(self, tag: str) -> bool:
        """Whether ``tag`` is a closed channel's message still waiting for :meth:`give_back_due`."""
        with self._lock:
            return tag in self._orphans

    def attach(self, channel: Any) -> None:
        """A channel of this process that takes messages (its held messages are never given back)."""
        self._channels.add(channel)

    def _held_by_open_channel(self, tag: str) -> bool:
        # kombu's restore put it back and a new channel of this process took it again (same tag): it is live
        for channel in list(self._channels):
            qos = getattr(channel, "_qos", None)
            if not getattr(channel, "closed", True) and qos is not None and tag in qos._delivered:
                return True
        return False

    def give_back_due(self) -> int:
        """Give back the orphaned messages whose grace has passed; return how many were pushed back."""
        now = time.monotonic()
        with self._lock:
            due = [tag for tag, at in self._orphans.items() if at <= now]
        restored = 0
        for tag in due:
            if not self._held_by_open_channel(tag):
                restored += self._give_back(tag, self.consumer_id)  # a RedisError keeps it for the next beat
            self.client.srem(self.inflight_key, tag)
            with self._lock:
                self._orphans.pop(tag, None)
        if restored:
            logger.warning("reliable fetch: gave back %d message(s) a closed channel held unacked", restored)
        return restored

    def _give_back(self, tag: str, consumer_id: str) -> int:
        """Push one message owned by ``consumer_id`` back onto its list, marked redelivered; 1 if it was."""
        owner = self.client.hget(OWNER_KEY, tag)
        if owner is None:
            return 0
        owner_id, _, source = _text(owner).partition("\n")
        if owner_id != consumer_id:
            return 0
        keys = [self.unacked_key, self.unacked_index_key, OWNER_KEY, source]
        entry = self.client.hget(self.unacked_key, tag)
        if entry is None:  # acked or restored meanwhile: drop the stale owner record
            self._recover(keys=keys, args=[tag, owner, "", ""])
            return 0
        marked = redelivered_payload(entry if isinstance(entry, bytes) else entry.encode())
        if marked is None:
            return 0
        payload, expected = marked
        return int(self._recover(keys=keys, args=[tag, owner, expected, payload]))


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
