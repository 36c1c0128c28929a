"""Replays published straight into a Redis broker's queue lists: pre-serialized, one pipeline per batch.

``send_task`` costs a few hundred microseconds per message (routing, signals,
one ``LPUSH`` round trip each); in a bulk replay that is the bottleneck. This
publisher builds the same protocol-2 message with Celery's own
``app.amqp.create_task_message``, serializes it with kombu, wraps it in the
envelope kombu's Redis transport writes (``Channel.prepare_message``,
``encode_body``) and sends a batch of ``LPUSH`` commands in one pipeline to the
key kombu's Redis transport uses for the queue and priority
(``Channel._q_for_pri``, with the transport's ``global_keyprefix``).

Confirmation: Redis answers every ``LPUSH`` with the list's new length; a
record counts as published only when its own reply came back as an integer.
If the pipeline breaks mid-way nothing is counted as published, so nothing is
deleted: at worst those records run twice after the next replay, never lost.

What it skips, compared with ``send_task``: the ``before_task_publish`` /
``after_task_publish`` signals, the ``task-sent`` event, and routing through an
exchange (the message goes to the named queue, as Celery's own retries do on
Redis). :func:`pipeline_publisher_for` therefore chooses it only for a Redis
broker without publish-signal receivers and falls back to
:class:`~celery_policy.deadletter.replay.celery_publisher` otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from celery import signals
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu.serialization import dumps

from celery_policy.deadletter.replay import Outgoing, celery_publisher, publish_options

__all__ = ["RedisPipelinePublisher", "pipeline_publisher_for"]

_PERSISTENT = 2  # AMQP delivery mode: what Celery's producer sets by default


class RedisPipelinePublisher:
    """Publish replays as pre-serialized messages, one Redis pipeline per batch (``publish_many``)."""

    def __init__(self, app: Any, queue: str | None = None) -> None:
        self.app = app
        self.queue = queue
        self._connection: Any = None
        self._channel: Any = None
        # read once: app.conf lookups and the node name cost more than the rest of a message
        self._serializer = app.conf.task_serializer
        self._repr_max = int(getattr(app.amqp, "argsrepr_maxsize", 1024))
        self._origin = anon_nodename()
        self._routes: dict[str, str] = {}

    def _open(self) -> Any:
        if self._channel is None:
            self._connection = self.app.connection_for_write()
            self._channel = self._connection.default_channel
        return self._channel

    def _envelope(self, channel: Any, item: Outgoing) -> tuple[str, str]:
        """The Redis key and the JSON payload kombu's Redis transport would ``LPUSH`` for this replay."""
        record = item.record
        options = publish_options(record, item.task_id, queue=self.queue, eta=item.eta, name=item.name)
        queue = str(options.pop("queue", None) or self._routed_queue(record.task))
        headers = options.pop("headers")
        priority = options.pop("priority", None)
        options["eta"] = options.get("eta")
        if isinstance(options["eta"], dt.datetime):
            options["eta"] = options["eta"].isoformat()
        link, link_error = options.pop("link", None), options.pop("link_error", None)
        message = self.app.amqp.create_task_message(
            item.task_id,
            record.task,
            record.args,
            record.kwargs,
            callbacks=link,
            errbacks=link_error,
            eta=options.pop("eta"),
            group_id=options.pop("group_id", None),
            group_index=options.pop("group_index", None),
            root_id=options.pop("root_id", None),
            parent_id=options.pop("parent_id", None),
            chain=options.pop("chain", None),
            shadow=options.pop("shadow", None),
            time_limit=options.pop("time_limit", None),
            soft_time_limit=options.pop("soft_time_limit", None),
            retries=options.pop("retries", 0),
            ignore_result=None,  # as send_task: the worker then follows the task's own ignore_result
            argsrepr=self._repr(record.args),
            kwargsrepr=self._repr(record.kwargs),
            origin=self._origin,
        )
        all_headers = {**message.headers, **headers}
        content_type, content_encoding, body = dumps(message.body, serializer=self._serializer)  # type: ignore[no-untyped-call]  # kombu is untyped
        properties = {
            **message.properties,
            "delivery_mode": _PERSISTENT,
            "delivery_info": {"exchange": "", "routing_key": queue},
        }
        envelope = channel.prepare_message(body, priority, content_type, content_encoding, all_headers, properties)
        envelope["body"], body_encoding = channel.encode_body(envelope["body"], channel.body_encoding)
        envelope["properties"]["body_encoding"] = body_encoding
        envelope["properties"]["delivery_tag"] = str(uuid.uuid4())
        key = channel._q_for_pri(queue, envelope["properties"].get("priority") or 0)
        return key, json.dumps(envelope)

    def _routed_queue(self, task: str) -> str:
        """The queue the app's router picks for ``task`` (a record without a queue of its own), as send_task would."""
        found = self._routes.get(task)
        if found is None:
            route = self.app.amqp.router.route({}, task)
            chosen = route.get("queue")
            found = self._routes[task] = str(getattr(chosen, "name", chosen) or self.app.conf.task_default_queue)
        return found

    def _repr(self, value: Any) -> str:
        """What Celery's ``saferepr`` gives for short values, at a fraction of its cost; saferepr itself otherwise."""
        shown = repr(value)
        return shown if len(shown) <= self._repr_max else saferepr(value, self._repr_max)

    def publish_many(self, items: list[Outgoing]) -> list[BaseException | None]:
        """Push ``items`` in one pipeline; one entry per item: None when Redis confirmed it, else the error."""
        try:
            channel = self._open()
            pipe = channel.client.pipeline(transaction=False)
            for item in items:
                key, payload = self._envelope(channel, item)
                pipe.lpush(key, payload)
            replies = pipe.execute(raise_on_error=False)
        except Exception as exc:  # unknown which were pushed: count none as published, so none is deleted
            self.close()
            return [exc] * len(items)
        return [None if isinstance(reply, int) else RuntimeError(f"LPUSH failed: {reply}") for reply in replies]

    def __call__(self, record: Any, task_id: str, *, eta: float | None = None, name: str | None = None) -> None:
        (error,) = self.publish_many([Outgoing(record, task_id, eta, name)])
        if error is not None:
            raise error

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            connection.release()


def _has_publish_receivers() -> bool:
    return bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)


def pipeline_publisher_for(app: Any, queue: str | None = None) -> RedisPipelinePublisher | celery_publisher:
    """The pipelined publisher when ``app``'s broker is Redis, nobody listens to the publish signals and the
    installed kombu has the transport parts it uses; otherwise the ``send_task`` publisher."""
    from celery_policy.support import pipeline_replay_problem

    scheme = str(app.conf.broker_url or "").split("://", 1)[0]
    if scheme not in {"redis", "rediss"} or _has_publish_receivers() or pipeline_replay_problem() is not None:
        return celery_publisher(app, queue)
    return RedisPipelinePublisher(app, queue)
