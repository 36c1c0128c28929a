# kombu ships py.typed but most of its transport methods are unannotated:
# mypy: disable-error-code="no-untyped-call"
"""kombu's Redis transport with reliable fetch: no instant where a message lives only in a worker's memory.

kombu takes a message with ``BRPOP`` and only afterwards records it in the
``unacked`` hash and ``unacked_index`` zset (``QoS.append``). A SIGKILL of the
consuming process between the two loses the message: it is in neither the
queue nor ``unacked``. Here one Lua script pops the message and writes the
same ``unacked``/``unacked_index`` entries kombu writes, plus an owner record
(see :mod:`celery_policy.transport._liveness`), in one atomic step. So:

- kombu's own machinery keeps working unchanged on the same keys:
  ``visibility_timeout`` restore, ``restore_unacked`` at shutdown, ``reject``
  with requeue, ack; producers may keep plain kombu (the queue format is the same);
- a consumer that died (its heartbeat key expired) gets its messages pushed
  back by its peers within seconds instead of the visibility timeout (1 h by default);
- a live consumer's messages are leased: its heartbeat thread keeps their
  ``unacked_index`` scores fresh, so no visibility-timeout sweep (this
  transport's or plain kombu's, in any process) restores a message whose
  consumer still holds it, however long the task or the countdown.

Polling keeps kombu's order: for each priority step, each queue of the
fair-rotation cycle, and the queue a message came from is rotated to the end.
A script cannot block, so an empty take waits ``reliable_idle_wait`` seconds
(0.05 by default) before the next one; while messages are waiting each take
returns one at once, as BRPOP would.

Use it with ``broker_transport = "celery_policy.transport.redis:Transport"``
(``celery_policy.install`` sets it; see the README's Reliability section).
``global_keyprefix`` is not supported.
"""

from __future__ import annotations

import hashlib
import logging
from time import monotonic, time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from kombu.utils.objects import cached_property
from redis.exceptions import NoScriptError, RedisError

from celery_policy.transport import delayed
from celery_policy.transport._liveness import OWNER_KEY, PREFIX, Liveness, liveness_for

logger = logging.getLogger("celery_policy.transport")

# KEYS: the lists to poll in order, then unacked hash, unacked_index zset, owner hash, inflight set
# ARGV: now (delivery time, as kombu's QoS.append scores it), consumer id
TAKE_SCRIPT = """
local n = #KEYS - 4
for i = 1, n do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, msg = pcall(cjson.decode, item)
    local tag, ex, rk
    if ok and type(msg) == 'table' and type(msg['properties']) == 'table' then
      local props = msg['properties']
      tag = props['delivery_tag']
      local di = props['delivery_info']
      if type(di) == 'table' then ex = di['exchange']; rk = di['routing_key'] end
    end
    if type(tag) ~= 'string' then return {KEYS[i], item, 0} end
    if type(ex) ~= 'string' then ex = '' end
    if type(rk) ~= 'string' then rk = '' end
    redis.call('ZADD', KEYS[n + 2], ARGV[1], tag)
    redis.call('HSET', KEYS[n + 1], tag, '[' .. item .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
    redis.call('HSET', KEYS[n + 3], tag, ARGV[2] .. '\\n' .. KEYS[i])
    redis.call('SADD', KEYS[n + 4], tag)
    return {KEYS[i], item, 1}
  end
end
return false
"""
TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()  # Redis names scripts by SHA-1

# kombu hooks the take calls where the installed kombu has them, picked once at import. The rest of the
# surface this module relies on is the same on every tested kombu line (celery_policy.support probes it at boot).
# kombu 5.7: after a take's reply was read, the BRPOP connection is idle: the moment to flush a pending
# streaming re-auth token (credential providers).
_FLUSH_REAUTH = getattr(kombu_redis.Channel, "_flush_brpop_reauth", None)
# kombu 5.7: queues declared with x-expires get their keys' expiry refreshed on every basic_get.
_REFRESH_EXPIRY = getattr(kombu_redis.Channel, "_maybe_update_queues_expire", None)

RELIABLE_OPTIONS = (
    "reliable_idle_wait",
    "reliable_heartbeat_interval",
    "reliable_heartbeat_ttl",
    "reliable_recover_interval",
    "delayed_delivery",
    "delayed_min_delay",
    "delayed_poll_interval",
)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS; the take script already wrote ``unacked``, and removal also clears the owner record."""

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        # The leases of what this process holds are renewed first, so this sweep never restores them
        # even when the heartbeat thread was late (kombu's sweep runs in the consumer's own loop).
        liveness = self.channel.__dict__.get("liveness")
        if liveness is not None:
            liveness.renew_if_stale()
        return super().restore_visible(*args, **kwargs)

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel._take_recorded:
            virtual.QoS.append(self, message, delivery_tag)
        else:  # a payload the script could not parse: record it the way kombu does
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self._no_longer_held(delivery_tag):
            virtual.QoS.ack(self, delivery_tag)  # forgotten here only
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._no_longer_held(delivery_tag):
            virtual.QoS.ack(self, delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)

    def _no_longer_held(self, delivery_tag: str) -> bool:
        """A late ack or reject from a closed channel, for a message it has already given back.

        Celery settles a job that ran through a broker outage on the channel the message came
        from, once the worker is connected again. By then the channel's messages are back in
        their queue (kombu's restore at close, or the give-back after the heartbeat TTL), and
        one may be running again: a message given back keeps its delivery tag, so the late ack
        would drop the new delivery's ``unacked`` record (lost if its worker dies) and a late
        requeue would push a second copy. What is still waiting for its give-back is this
        channel's own, and is settled as before (an ack then makes the give-back a no-op).
        """
        channel = self.channel
        liveness = channel.__dict__.get("liveness")
        if not channel.closed or liveness is None:
            return False
        return not liveness.gives_back_later(str(delivery_tag))

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        with self.pipe_or_acquire(pipe) as active:
            return (
                active.zrem(self.unacked_index_key, delivery_tag)
                .hdel(self.unacked_key, delivery_tag)
                .hdel(OWNER_KEY, delivery_tag)
                .srem(self.channel.liveness.inflight_key, delivery_tag)
            )


class Channel(kombu_redis.Channel):
    """A Redis channel whose takes are atomic with the unacked bookkeeping."""

    QoS = QoS

    reliable_idle_wait = 0.05
    reliable_heartbeat_interval = 2.0
    reliable_heartbeat_ttl = 10.0
    reliable_recover_interval = 5.0
    delayed_delivery = False  # celery_policy.transport.delayed; install() turns it on with worker.delayed_delivery
    delayed_min_delay = 1.0  # shorter countdowns are held by the worker as Celery does (leased meanwhile)
    delayed_poll_interval = 0.5

    # kombu types the tuple by its exact length
    from_transport_options = (*kombu_redis.Channel.from_transport_options, *RELIABLE_OPTIONS)  # type: ignore[assignment]

    _idle_until = 0.0
    _take_recorded = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            self._disconnect_pools()
            msg = "celery-policy reliable fetch does not support global_keyprefix; turn one of them off"
            raise ValueError(msg)
        self.client.script_load(TAKE_SCRIPT)
        self._connparams(asynchronous=False)  # cache both (see _connparams)
        self._connparams(asynchronous=True)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        # kombu builds connection parameters from ``self.connection.client`` (the kombu
        # Connection), which ``Connection._do_close_transport`` sets to None. When the
        # broker restarts, Celery closes the lost connection; closing its channel restores
        # the unacked messages (``QoS.restore_unacked``), which asks for a fresh pool and
        # read ``None.hostname``: AttributeError, which ``ignore_errors`` does not catch,
        # and the worker exits ("Unrecoverable error"). Remember the parameters instead.
        cache: dict[bool, dict[str, Any]] = self.__dict__.setdefault("_connparams_cache", {})
        if self.connection.client is None and asynchronous in cache:
            return dict(cache[asynchronous])
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        cache[asynchronous] = dict(params)
        return params

    def close(self) -> None:
        qos = self._qos
        held = [str(tag) for tag in qos._delivered] if qos is not None else []
        try:
            super().close()  # kombu gives back what it holds (restore_unacked) when Redis answers
        except self.connection_errors:
            # Redis did not answer (a broker restart): the messages stay in unacked under this live consumer.
            if held and "liveness" in self.__dict__:
                self.liveness.give_back_later(held)
            raise

    @cached_property
    def liveness(self) -> Liveness:
        found = liveness_for(
            self._connparams(asynchronous=False),
            unacked_key=self.unacked_key,
            unacked_index_key=self.unacked_index_key,
            interval_s=float(self.reliable_heartbeat_interval),
            ttl_s=float(self.reliable_heartbeat_ttl),
            recover_interval_s=float(self.reliable_recover_interval),
        )
        found.use_lease_interval(float(self.visibility_timeout))
        return found

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        liveness = self.liveness
        if self.delayed_delivery:  # every consuming process moves due delayed messages
            if liveness.add_periodic(float(self.delayed_poll_interval), liveness.move_due):
                logger.info(
                    "delayed delivery: this process moves the due delayed messages of every queue of Redis db %s"
                    " every %.1f s (plain Celery workers do not: their queues depend on a process like this one)",
                    self._connparams().get("db", 0), float(self.delayed_poll_interval),
                )  # fmt: skip
        elif not liveness.noted_delayed_off:
            liveness.noted_delayed_off = True
            self._warn_if_delayed_waiting()
        liveness.ensure_started()
        liveness.attach(self)
        return super().basic_consume(queue, *args, **kwargs)

    def _warn_if_delayed_waiting(self) -> None:
        """Delayed delivery is off here: say so when the broker's delayed set holds messages (we won't move them)."""
        try:
            with self.conn_or_acquire() as client:
                waiting = sum(delayed.counts(client).values())
        except RedisError:
            return
        if waiting:
            logger.warning(
                "delayed delivery is off in this worker, and %d delayed message(s) wait in the broker's delayed set:"
                " this worker does not move them when due; a celery-policy worker with delayed delivery on does",
                waiting,
            )

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if self.delayed_delivery:
            due = delayed.eta_of(message)
            if due is not None and due - time() >= float(self.delayed_min_delay):
                self._put_delayed(queue, message, due)
                return
        super()._put(queue, message, **kwargs)

    def _put_delayed(self, queue: str, message: Any, due: float) -> None:
        """Store the message in the queue's delayed set (and ack the retried one, see delayed.acking)."""
        list_key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        tag = delayed.take_ack_tag() or ""
        keys = [delayed.delayed_key(queue), delayed.QUEUES_KEY, self.unacked_key, self.unacked_index_key, OWNER_KEY]
        args = [repr(due), delayed.member_for(list_key, message), queue, tag, PREFIX + "inflight:"]
        with self.conn_or_acquire() as client:
            client.eval(delayed.SCHEDULE_SCRIPT, len(keys), *keys, *args)
        delayed.mark_stored()

    def _take_args(self, keys: list[str]) -> list[Any]:
        liveness = self.liveness
        return [
            len(keys) + 4,
            *keys,
            self.unacked_key,
            self.unacked_index_key,
            OWNER_KEY,
            liveness.inflight_key,
            repr(time()),
            liveness.consumer_id,
        ]

    def _brpop_start(self, timeout: float | None = None) -> None:
        if monotonic() < self._idle_until:
            return  # the last take found nothing: the event loop's idle timer brings us back
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu declares it as None
        connection.send_command("EVALSHA", TAKE_SHA, *self._take_args(keys))

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except NoScriptError:
                # Redis restarted with an empty script cache under this connection.
                self.client.script_load(TAKE_SCRIPT)
                raise virtual.Empty() from None
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if reply:
                self._deliver_taken(reply)
                return True
            self._idle_until = monotonic() + float(self.reliable_idle_wait)
            raise virtual.Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu declares it as bool, assigns None
            if _FLUSH_REAUTH is not None:
                _FLUSH_REAUTH(self)

    def _deliver_taken(self, reply: list[Any]) -> None:
        source, item, recorded = reply
        queue = bytes_to_str(source).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self._take_recorded = bool(recorded)
        try:
            self.connection._deliver(loads(bytes_to_str(item)), queue)
        finally:
            self._take_recorded = True

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        # basic_get: the same atomic take, on one queue's priority lists.
        self.liveness.ensure_started()
        self.liveness.attach(self)  # what it takes is held (and leased) like a consumer's
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        with self.conn_or_acquire() as client:
            try:
                reply = client.evalsha(TAKE_SHA, *self._take_args(keys))
            except NoScriptError:
                client.script_load(TAKE_SCRIPT)
                reply = client.evalsha(TAKE_SHA, *self._take_args(keys))
            if _REFRESH_EXPIRY is not None:
                _REFRESH_EXPIRY(self, client, queue)
        if not reply:
            raise virtual.Empty()
        # basic_get calls qos.append right after this returns (same thread, no I/O in between).
        self._take_recorded = bool(reply[2])
        return loads(bytes_to_str(reply[1]))

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            return super().basic_get(queue, no_ack, **kwargs)
        finally:
            self._take_recorded = True


class MultiChannelPoller(kombu_redis.MultiChannelPoller):
    """Without an event loop (``drain_events``): do not sleep past a channel's idle wait."""

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        now = monotonic()
        waits = [c._idle_until - now for c in self._channels if getattr(c, "_idle_until", 0.0) > now]
        if waits:
            timeout = min(waits) if timeout is None else min(timeout, *waits)
        return super().get(callback, timeout)


def _tick() -> None:
    """Nothing: a timer that wakes the event loop so an idle channel takes again."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with reliable fetch (``redis://`` URLs, ``broker_transport`` set to this class)."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle: Any = MultiChannelPoller()

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle = self.cycle
        old = getattr(cycle, "_idle_tref", None)
        if old is not None:
            old.cancel()
        idle_wait = connection.client.transport_options.get("reliable_idle_wait", Channel.reliable_idle_wait)
        cycle._idle_tref = loop.call_repeatedly(max(float(idle_wait), 0.001), _tick)
