"""The part of a task message a faithful replay needs: its own headers and its canvas.

Celery's message protocol 2 carries a task's place in a canvas in two spots:
the headers (``root_id``, ``parent_id``, ``group``, ``group_index``,
``timelimit``, ``shadow``, user headers) and the body's third element, the
"embed" (``callbacks`` = link, ``errbacks`` = link_error, ``chain`` = the
rest of the chain with the next task last, ``chord`` = the body of the chord
this task is a header member of). :func:`capture_request` and
:func:`capture_message` copy both into a record's fields;
:func:`send_options` turns them back into ``send_task`` options.

What is left out on purpose: broker bookkeeping (``x-death``, ``redelivered``,
delivery tags), the protocol headers Celery sets itself on every publish, and
celery-policy's retry state, so the replayed task starts with a fresh retry
budget.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from celery_policy.deadletter.record import DeadLetter

__all__ = [
    "CANVAS_FIELDS",
    "capture_message",
    "capture_request",
    "redact_fields",
    "send_options",
]

# Headers Celery writes on every publish (app/amqp.py as_task_v2), plus what the store keeps in fields of its own.
_PROTOCOL = frozenset({
    "lang", "task", "id", "eta", "expires", "retries", "argsrepr", "kwargsrepr", "origin",
    "root_id", "parent_id", "group", "group_index", "ignore_result", "replaced_task_nesting",
})  # fmt: skip
# Broker bookkeeping and per-delivery state, never the task's.
_BROKER = frozenset({"redelivered", "delivery_tag", "x-delivery-count", "x-first-death-exchange",
                     "x-first-death-queue", "x-first-death-reason", "x-last-death-exchange",
                     "x-last-death-queue", "x-last-death-reason", "x-death"})  # fmt: skip
# celery-policy's retry counters and first-failure time (runtime/headers.py): a replay starts afresh.
_RETRY_STATE = frozenset({"celery_policy"})
# The canvas fields of a record, in the order ``dlq show`` prints them.
CANVAS_FIELDS = (
    "root_id", "parent_id", "group_id", "group_index", "chain", "callbacks", "errbacks", "chord",
    "priority", "exchange", "routing_key", "headers",
)  # fmt: skip


def task_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers that belong to the task: user headers, ``timelimit``, ``shadow``, stamps."""
    kept: dict[str, Any] = {}
    for key, value in (headers or {}).items():
        if key in _PROTOCOL or key in _BROKER or key in _RETRY_STATE or key.startswith("x-"):
            continue
        if key in {"timelimit", "shadow", "stamps", "stamped_headers"} and value in (None, [], {}, [None, None]):
            continue
        kept[key] = value
    return kept


def _signatures(value: Any) -> list[dict[str, Any]]:
    if not value:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [dict(item) for item in items if isinstance(item, Mapping)]


def _fields(headers: Mapping[str, Any], embed: Mapping[str, Any], delivery: Mapping[str, Any]) -> dict[str, Any]:
    chord = embed.get("chord")
    priority = delivery.get("priority")
    if priority is None:
        priority = (delivery.get("properties") or {}).get("priority") if isinstance(delivery, Mapping) else None
    group_index = headers.get("group_index")
    return {
        "headers": task_headers(headers),
        "chain": _signatures(embed.get("chain")),
        "callbacks": _signatures(embed.get("callbacks")),
        "errbacks": _signatures(embed.get("errbacks")),
        "chord": dict(chord) if isinstance(chord, Mapping) else None,
        "group_id": headers.get("group") or None,
        "group_index": int(group_index) if isinstance(group_index, int) else None,
        "root_id": headers.get("root_id") or None,
        "parent_id": headers.get("parent_id") or None,
        "priority": int(priority) if isinstance(priority, int) else None,
        "exchange": delivery.get("exchange") or None,
        "routing_key": delivery.get("routing_key") or None,
    }


def capture_request(request: Any) -> dict[str, Any]:
    """The canvas fields of a record written by a worker, from the task's request context."""
    headers = dict(getattr(request, "headers", None) or {})
    for name in ("root_id", "parent_id", "group", "group_index", "timelimit", "shadow"):
        value = getattr(request, name, None)
        if value is not None:
            headers.setdefault(name, value)
    embed = {name: getattr(request, name, None) for name in ("chain", "callbacks", "errbacks", "chord")}
    delivery = dict(getattr(request, "delivery_info", None) or {})
    return _fields(headers, embed, delivery)


def capture_message(headers: Mapping[str, Any], body: Any, properties: Mapping[str, Any]) -> dict[str, Any]:
    """The canvas fields of a protocol-2 task message (one the broker dead-lettered), from the message itself."""
    embed = body[2] if isinstance(body, (list, tuple)) and len(body) > 2 and isinstance(body[2], Mapping) else {}
    delivery = dict(properties.get("delivery_info") or {})
    if properties.get("priority") is not None:
        delivery.setdefault("priority", properties.get("priority"))
    return _fields(headers, embed, delivery)


def redact_fields(fields: Mapping[str, Any], mode: str, keys: Iterable[str]) -> tuple[dict[str, Any], bool]:
    """``fields`` as the ``log`` policy lets them be stored, and whether that left them intact.

    The chain and callbacks carry other tasks' arguments and the headers may carry
    tokens: ``redact`` replaces every value under a key named in ``redact_keys``
    (at any depth), ``hide`` stores no canvas or headers at all. When that changed
    anything the record is not replayable, exactly as for redacted arguments.
    """
    if mode == "show":
        return dict(fields), True
    if mode == "hide":
        hidden = dict(fields)
        intact = True
        for name in ("headers", "chain", "callbacks", "errbacks", "chord"):
            if fields.get(name):
                intact = False
            hidden[name] = None if name == "chord" else ({} if name == "headers" else [])
        return hidden, intact
    lowered = frozenset(key.lower() for key in keys)
    redacted = {name: _redact(value, lowered, 0) for name, value in fields.items()}
    return redacted, _same(redacted, fields)


def _redact(value: Any, keys: frozenset[str], depth: int) -> Any:
    if depth > 16:
        return value
    if isinstance(value, Mapping):
        return {k: ("***" if str(k).lower() in keys else _redact(v, keys, depth + 1)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v, keys, depth + 1) for v in value]
    return value


def _same(left: Any, right: Any) -> bool:
    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=repr)

    return dump(left) == dump(dict(right))


def chord_member(record: DeadLetter) -> bool:
    """The record's task was a header member of a chord (whose body waited on it)."""
    return bool(record.chord)


def send_options(record: DeadLetter) -> dict[str, Any]:
    """``send_task`` options that put a replay back where the task was in its canvas.

    ``retries`` is 0 and celery-policy's retry state is not carried over: the replay
    has a fresh retry budget. ``expires`` and ``eta`` of the original are dropped
    (a replay runs after them by definition).
    """
    headers = dict(record.headers)
    time_limit, soft_time_limit = _limits(headers.pop("timelimit", None))
    options: dict[str, Any] = {
        "retries": 0,
        "root_id": record.root_id,
        "parent_id": record.parent_id,
        "headers": headers,
    }
    if record.chain:
        options["chain"] = [dict(sig) for sig in record.chain]
    if record.callbacks:
        options["link"] = [dict(sig) for sig in record.callbacks]
    if record.errbacks:
        options["link_error"] = [dict(sig) for sig in record.errbacks]
    # A chord member is replayed only on request (``without_chord``) and then alone: its chord already failed
    # and Celery cannot rejoin it; sending ``chord``/``group`` again would count it into that dead chord.
    if record.group_id and not record.chord:
        options["group_id"] = record.group_id
        if record.group_index is not None:
            options["group_index"] = record.group_index
    shadow = headers.pop("shadow", None)
    if shadow:
        options["shadow"] = shadow
    if time_limit is not None:
        options["time_limit"] = time_limit
    if soft_time_limit is not None:
        options["soft_time_limit"] = soft_time_limit
    if record.priority is not None:
        options["priority"] = record.priority
    return options


def _limits(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        hard, soft = value
        return (hard if isinstance(hard, (int, float)) else None, soft if isinstance(soft, (int, float)) else None)
    return None, None
