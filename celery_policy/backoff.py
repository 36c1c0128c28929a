"""Retry delays: ``min(max, initial * factor ** n)`` then jitter.

``n`` is the number of retries already made, so the first retry waits about
``initial``. Shared by the runtime (which draws a delay) and ``explain``
(which prints the range).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from celery_policy.model import Backoff


def base_delay(backoff: Backoff, retries_made: int) -> float:
    """The un-jittered delay before retry number ``retries_made + 1``."""
    try:
        raw = backoff.initial * backoff.factor**retries_made
    except OverflowError:
        return backoff.max
    return min(backoff.max, raw)


def delay_bounds(backoff: Backoff, retries_made: int) -> tuple[float, float]:
    """(lowest, highest) delay jitter can produce."""
    delay = base_delay(backoff, retries_made)
    if backoff.jitter == "full":
        return 0.0, delay
    if backoff.jitter == "equal":
        return delay / 2, delay
    return delay, delay


def draw_delay(backoff: Backoff, retries_made: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
    """One delay, jittered as configured."""
    delay = base_delay(backoff, retries_made)
    if backoff.jitter == "full":
        return uniform(0.0, delay)
    if backoff.jitter == "equal":
        return delay / 2 + uniform(0.0, delay / 2)
    return delay


def worst_case_total(backoff: Backoff, retries: int) -> float:
    """Sum of the highest delays over ``retries`` retries."""
    return sum(delay_bounds(backoff, n)[1] for n in range(retries))
