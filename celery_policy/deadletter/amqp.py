"""The dead-letter store on a RabbitMQ broker: one ``<queue>.dead`` queue per task queue.

Two kinds of message live in a dead queue, and both read back as the same
:class:`DeadLetter` record:

- records the runtime publishes (``add``): the record's JSON, persistent, with
  publisher confirms, marked by the ``celery-policy-record`` header;
- Celery task messages the broker dead-lettered itself: a quorum queue past its
  ``x-delivery-limit`` (``ack.max_redeliveries``, see ``queues.py``) moves
  the message here with an ``x-death`` header, so a poison pill that kills its
  worker every time reads back as a ``redelivery_limit`` record, as on Redis.

Reading never removes anything: a dead queue is browsed with ``basic_get``
without ack on a channel of its own, at most as many messages as the queue
held when the browse started (so records written meanwhile cannot loop it),
and the channel is closed, which hands every message back to the broker. A
classic queue puts requeued messages back at their original position, so
browsing neither loses nor reorders records, and a browser that dies mid-way
has the same effect as the close. Dead queues are therefore always classic
(a quorum queue would count each browse as a delivery against its limit).

``replay`` is consume with manual ack, publish with confirm, then ack: a
process killed between the publish and the ack leaves the record in the dead
queue (a duplicate on the next replay), never a loss.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from celery_policy.deadletter.canvas import capture_message
from celery_policy.deadletter.record import DeadLetter, Reason
from celery_policy.deadletter.store import Filter, StoreUnavailableError, _safe_url
from celery_policy.queues import dead_queue_for, declare_dead_queue

RECORD_HEADER = "celery-policy-record"
POLICY_HEADER = "celery_policy"  # runtime/headers.py HEADER: {"t0": first failure, ...}

Publisher = Callable[[DeadLetter, str], None]


class AmqpDeadLetterStore:
    """Dead letters in ``<queue>.dead`` queues on a RabbitMQ broker.

    ``queues`` are the task queues whose dead queues are read (``iter``,
    ``count``, ``delete``, ``replay``); ``add`` writes to the dead queue of the
    record's own queue (``default_queue`` when it has none) and declares it.
    ``delivery_limits`` (queue -> ``x-delivery-limit``) only words the message
    of broker-dead-lettered records. Raises :class:`StoreUnavailableError` when
    the broker cannot be reached.
    """

    def __init__(
        self,
        url: str,
        queues: Iterable[str] = (),
        *,
        default_queue: str = "celery",
        delivery_limits: Mapping[str, int] | None = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.default_queue = default_queue
        self.queues = tuple(dict.fromkeys([*queues, default_queue]))
        self.delivery_limits = dict(delivery_limits or {})
        self.connect_timeout_s = connect_timeout_s
        self._connection: Any = None
        self._channel: Any = None
        self._declared: set[str] = set()
        self._lock = threading.Lock()  # the threads pool shares one store per process
        self.client = None  # no Redis: no redelivery counter (the quorum queue's delivery limit caps) nor idempotency

    # -- connection ------------------------------------------------------------------------------

    def _connect(self) -> Any:
        from kombu.connection import Connection

        if self._connection is None:
            connection = Connection(  # type: ignore[no-untyped-call]
                self.url, connect_timeout=self.connect_timeout_s, transport_options={"confirm_publish": True}
            )
            try:
                connection.connect()  # type: ignore[no-untyped-call]
            except Exception as exc:
                connection.release()  # type: ignore[no-untyped-call]
                raise self._unavailable(exc) from exc
            self._connection = connection
        return self._connection.connection  # the py-amqp connection

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._declared.clear()
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                connection.release()

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"dead-letter store {self.describe()} unavailable: {exc}")

    @contextmanager
    def _browse_channel(self) -> Iterator[Any]:
        """A channel of its own; closing it requeues whatever it got and did not ack."""
        channel = None
        try:
            channel = self._connect().channel()
            yield channel
        except StoreUnavailableError:
            self._reset()
            raise
        except _QueueMissing:
            raise
        except Exception as exc:
            if _is_not_found(exc):  # the broker closed this channel only
                channel = None
                raise _QueueMissing from exc
            self._reset()
            raise self._unavailable(exc) from exc
        finally:
            if channel is not None:
                try:
                    channel.close()
                except Exception:  # the connection went away: the broker requeued everything anyway
                    self._reset()

    # -- the DeadLetterStore protocol --------------------------------------------------------------

    def add(self, record: DeadLetter) -> str:
        """Publish one record to its queue's dead queue, persistent, and wait for the broker's confirm."""
        import amqp  # type: ignore[import-untyped]  # py-amqp, kombu's AMQP client, ships no types

        entry_id = uuid.uuid4().hex
        dead = dead_queue_for(record.queue or self.default_queue)
        body = record.model_dump_json(exclude={"id"})
        message = amqp.Message(
            body,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=entry_id,
            timestamp=int(record.last_failure),
            application_headers={RECORD_HEADER: 1},
        )
        with self._lock:
            for attempt in (1, 2):  # one reconnect: a connection the broker closed while idle
                try:
                    if self._channel is None:
                        self._channel = self._connect().channel()
                    if dead not in self._declared:
                        declare_dead_queue(self._channel, dead)
                        self._declared.add(dead)
                    # confirm_publish: basic_publish returns once the broker confirmed (raises if it nacked)
                    self._channel.basic_publish(message, exchange="", routing_key=dead, mandatory=True)
                    return entry_id
                except StoreUnavailableError:
                    self._reset()
                    raise
                except Exception as exc:
                    self._reset()
                    if attempt == 2:
                        raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def iter(self, flt: Filter, limit: int | None = None) -> Iterator[DeadLetter]:
        """Matching records of every dead queue, oldest failure first; nothing is removed."""
        records: list[DeadLetter] = []
        for queue in self.queues:
            records.extend(record for record, _ in self._browse(queue) if flt.matches(record))
        records.sort(key=lambda record: record.last_failure)
        yield from records[:limit] if limit is not None else records

    def count(self) -> int:
        total = 0
        for queue in self.queues:
            total += self._message_count(dead_queue_for(queue))
        return total

    def delete(self, entry_id: str) -> bool:
        """Ack the one message with this id (the others go back in place); False when there is none."""
        for queue in self.queues:
            dead = dead_queue_for(queue)
            at_most = self._message_count(dead)
            if not at_most:
                continue
            try:
                with self._browse_channel() as channel:
                    for message in _get_all(channel, dead, at_most):
                        if _entry_id(message) == entry_id:
                            channel.basic_ack(message.delivery_tag)
                            return True
            except _QueueMissing:
                continue
        return False

    def claim(self, flt: Filter) -> _ClaimedRecords:
        """The matching records, each held unacked on a channel until :meth:`_ClaimedRecords.remove` acks it
        (after its replay was confirmed) or the channel closes and the broker takes it back."""
        return _ClaimedRecords(self, flt)

    def replay(
        self, flt: Filter, publish: Publisher, *, dry_run: bool = False, allow_redacted: bool = False, **options: Any
    ) -> Any:
        """Replay matching records: take one unacked, publish it (confirmed) with a new task id, then ack it.

        Returns a :class:`~celery_policy.deadletter.replay.ReplayReport` (see
        :func:`~celery_policy.deadletter.replay.replay_dead_letters` for ``options``). A
        publish that fails leaves its record in place (it goes back to the queue when the
        channel closes); records whose arguments were redacted are skipped.
        """
        from celery_policy.deadletter.replay import replay_dead_letters

        return replay_dead_letters(self, publish, flt, dry_run=dry_run, allow_redacted=allow_redacted, **options)

    def describe(self) -> str:
        names = ", ".join(f"'{dead_queue_for(q)}'" for q in self.queues)
        return f"{_safe_url(self.url)} queues {names}"

    # -- helpers -----------------------------------------------------------------------------------

    def _message_count(self, dead: str) -> int:
        try:
            with self._browse_channel() as channel:
                return int(channel.queue_declare(dead, passive=True).message_count)
        except _QueueMissing:
            return 0

    def _browse(self, queue: str) -> list[tuple[DeadLetter, Any]]:
        dead = dead_queue_for(queue)
        found: list[tuple[DeadLetter, Any]] = []
        at_most = self._message_count(dead)
        if not at_most:
            return found
        try:
            with self._browse_channel() as channel:
                for message in _get_all(channel, dead, at_most):
                    record = self._decode(message, queue)
                    if record is not None:
                        found.append((record, message))
        except _QueueMissing:
            return []
        return found

    def _decode(self, message: Any, queue: str) -> DeadLetter | None:
        headers = dict(message.headers or {})
        if RECORD_HEADER in headers:
            try:
                data = json.loads(_text(message.body))
            except ValueError:
                return None
            data["id"] = _entry_id(message)
            return DeadLetter.model_validate(data)
        if "task" in headers and "id" in headers:
            return self._decode_task_message(message, headers, queue)
        return None

    def _decode_task_message(self, message: Any, headers: dict[str, Any], queue: str) -> DeadLetter:
        """A Celery message the broker dead-lettered (protocol 2), as a record."""
        deaths = headers.get("x-death") or [{}]
        death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping) else {}
        broker_reason = str(headers.get("x-first-death-reason") or death.get("reason") or "rejected")
        source = str(headers.get("x-first-death-queue") or death.get("queue") or queue)
        when = death.get("time")
        last = when.replace(tzinfo=dt.timezone.utc).timestamp() if isinstance(when, dt.datetime) else time.time()
        state = headers.get(POLICY_HEADER)
        first = float(state.get("t0") or last) if isinstance(state, Mapping) else last
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        replayable = False
        body: Any = None
        if (message.content_type or "application/json") == "application/json":
            try:
                body = json.loads(_text(message.body))
                args, kwargs = list(body[0]), dict(body[1])
                replayable = True
            except (ValueError, TypeError, IndexError, KeyError):
                pass
        # The original routing is in x-death: the message's own delivery_info is its delivery from the dead queue.
        routing_keys = death.get("routing-keys") or []
        original = {
            "priority": (message.properties or {}).get("priority"),
            "delivery_info": {
                "exchange": death.get("exchange"),
                "routing_key": routing_keys[0] if isinstance(routing_keys, list) and routing_keys else source,
            },
        }
        canvas = capture_message(headers, body, original)
        reason: Reason
        if broker_reason == "delivery_limit":
            limit = self.delivery_limits.get(source)
            reason = "redelivery_limit"
            exc_message = (
                f"message redelivered {limit + 1} times after lost workers (max_redeliveries={limit})"
                if limit is not None
                else "message redelivered past the queue's delivery limit after lost workers"
            )
        else:
            reason = "rejected"
            exc_message = f"message dead-lettered by the broker ({broker_reason})"
        return DeadLetter(
            task=str(headers["task"]),
            task_id=str(headers["id"]),
            args=args,
            kwargs=kwargs,
            replayable=replayable,
            reason=reason,
            exc_type="builtins.RuntimeError",  # as the Redis counter's record (runtime/task.py check_redelivery)
            exc_message=exc_message,
            attempts=int(headers.get("retries") or 0) + 1,
            first_failure=min(first, last),
            last_failure=last,
            queue=source,
            policy_source=f"broker: x-death reason {broker_reason}",
            id=_entry_id(message),
            **canvas,
        )


class _ClaimedRecords:
    """A replay source over the dead queues: records read unacked, acked one by one once replayed.

    ``max_batch`` is 1: each record is acked before the next one is read, while its channel is
    still open (a channel that closes hands back whatever it holds unacked).
    """

    max_batch = 1

    def __init__(self, store: AmqpDeadLetterStore, flt: Filter) -> None:
        self.store = store
        self.flt = flt
        self._held: dict[int, tuple[Any, Any]] = {}  # id(record) -> (channel, delivery tag)
        self._iterator: Iterator[DeadLetter] | None = None

    def records(self) -> Iterator[DeadLetter]:
        self._iterator = self._records()
        return self._iterator

    def _records(self) -> Iterator[DeadLetter]:
        store = self.store
        for queue in store.queues:
            dead = dead_queue_for(queue)
            at_most = store._message_count(dead)  # records published by this replay's failures come after these
            if not at_most:
                continue
            try:
                with store._browse_channel() as channel:
                    for message in _get_all(channel, dead, at_most):
                        record = store._decode(message, queue)
                        if record is None or not self.flt.matches(record):
                            continue
                        self._held[id(record)] = (channel, message.delivery_tag)
                        yield record
                        self._held.pop(id(record), None)
            except _QueueMissing:
                continue

    def remove(self, records: list[DeadLetter]) -> None:
        from celery_policy.deadletter.replay import _RemoveFailed

        for record in records:
            channel, tag = self._held.pop(id(record), (None, None))
            if channel is None:
                raise _RemoveFailed("the record's channel is closed", "the broker connection broke")
            try:
                channel.basic_ack(tag)
            except Exception as exc:
                # not acked: the broker requeues it, so it is replayed again later (a duplicate)
                self.store._reset()
                stop = "the broker connection broke; the remaining records were not replayed"
                raise _RemoveFailed(str(exc), stop) from exc

    def close(self) -> None:
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()  # leaves the channel's `with`: the broker takes back what was not acked


class _QueueMissing(Exception):
    """The dead queue was never declared: nothing was dead-lettered there."""


def _get_all(channel: Any, dead: str, at_most: int) -> Iterator[Any]:
    """Up to ``at_most`` messages from the head of ``dead``, unacked (the channel holds them)."""
    for _ in range(at_most):
        message = channel.basic_get(dead, no_ack=False)
        if message is None:
            return
        yield message


def _entry_id(message: Any) -> str:
    properties = message.properties or {}
    found = properties.get("message_id") or properties.get("correlation_id") or (message.headers or {}).get("id")
    return str(found) if found else f"tag-{message.delivery_tag}"


def _text(body: Any) -> str:
    return body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else str(body)


def _is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "reply_code", None) == 404


def confirmed_publisher(app: Any, queue: str | None = None) -> Publisher:
    """Publish a record's task through ``app`` with publisher confirms (``send_task`` returns once the broker
    confirmed). The queue is not declared again: it exists (its dead letters came from it), and a declaration
    without the policy's arguments would fail with PRECONDITION_FAILED."""
    options = dict(app.conf.broker_transport_options or {})
    options["confirm_publish"] = True
    app.conf.broker_transport_options = options

    from celery_policy.deadletter.replay import publish_options

    def publish(record: DeadLetter, task_id: str, *, eta: float | None = None, name: str | None = None) -> None:
        extra = publish_options(record, task_id, queue=queue, eta=eta, name=name)
        app.send_task(record.task, args=record.args, kwargs=record.kwargs, declare=[], **extra)

    return publish
