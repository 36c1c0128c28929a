"""Simulated outages of the shop's external services, switched on and off in Redis.

The demo turns the supplier feed off, watches ``catalog.ingest`` retry and
give up, turns it back on, and replays the dead letter.
"""

from __future__ import annotations

import os
from functools import cache

import redis


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))


def is_down(service: str) -> bool:
    return bool(_client().exists(f"shop:outage:{service}"))


def set_down(service: str, down: bool) -> None:
    if down:
        _client().set(f"shop:outage:{service}", 1)
    else:
        _client().delete(f"shop:outage:{service}")
