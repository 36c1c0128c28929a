"""The message header celery-policy carries across retries: retry counters and the first failure's time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEADER = "celery_policy"  # {"n": {counter: retries used}, "t0": first failure epoch seconds}

__all__ = ["HEADER", "headers_to_copy", "policy_state"]


def policy_state(request: Any) -> Mapping[str, Any]:
    """Our header on the request (``{"n": ..., "t0": ...}``), or an empty mapping."""
    headers = request.headers
    if not headers:
        return {}
    value = headers.get(HEADER)
    return value if isinstance(value, Mapping) else {}


def _copied(name: str) -> bool:
    return name not in {"redelivered", "x-death"} and not name.startswith(("x-first-death-", "x-last-death-"))


def headers_to_copy(request: Any) -> dict[str, Any]:
    """The request's headers for a message published again, without the broker's delivery marks.

    kombu's Redis transport injects ``redelivered`` as a header on restore; copied
    into a new message it would mark a fresh delivery as redelivered. RabbitMQ adds
    ``x-death`` (and ``x-first-death-*``/``x-last-death-*``) when a message is
    dead-lettered; copied, its cycle detection can drop the new message (celery/celery#9867).
    """
    return {k: v for k, v in (getattr(request, "headers", None) or {}).items() if _copied(k)}
