"""Retry delays and schedules: ``min(max, initial * factor ** n)`` then jitter.

``n`` is the number of retries already made, so the first retry waits about
``initial``. Every piece of schedule maths lives here: the runtime draws a
delay, ``explain`` prints the ranges and totals, and the lint rules compare
the longest wait with the broker's limits.

``delay_from`` (a rule reading the delay from an exception attribute) makes a
delay unknown in advance: its bounds are ``(0, backoff.max)``.
"""

from __future__ import annotations

import math
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


def delay_bounds(backoff: Backoff, retries_made: int, delay_from: str | None = None) -> tuple[float, float]:
    """(lowest, highest) delay jitter can produce (with ``delay_from``: anything up to the cap)."""
    if delay_from is not None:
        # The exception says how long to wait; only the cap is known in advance.
        return 0.0, backoff.max
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


def longest_delay(backoff: Backoff, retries: int | None, delay_from: str | None = None) -> float:
    """The longest single wait a budget of ``retries`` (None: no cap) can reach."""
    if delay_from is not None or retries is None:
        return backoff.max
    return base_delay(backoff, max(retries - 1, 0))


def worst_case_total(backoff: Backoff, retries: int, delay_from: str | None = None) -> float:
    """Sum of the highest delays of the first ``retries`` retries.

    Delays never shrink (factor >= 1), so once one stops growing every later
    one is the same: the loop is short even for a huge ``max_retries``.
    """
    total = 0.0
    previous = -1.0
    for retries_made in range(retries):
        high = delay_bounds(backoff, retries_made, delay_from)[1]
        if high == previous:
            return total + high * (retries - retries_made)
        total += high
        previous = high
    return total


def deadline_passed_at(
    backoff: Backoff, delay_from: str | None, deadline: float | None, max_retries: int | None
) -> int | None:
    """The first retry whose cumulative worst-case delay passes the deadline (within the cap), or None."""
    if deadline is None:
        return None
    total = 0.0
    previous = -1.0
    retries_made = 0
    while max_retries is None or retries_made < max_retries:
        high = delay_bounds(backoff, retries_made, delay_from)[1]
        if high == previous:
            if high <= 0:
                return None
            # Every later delay is ``high``: jump straight to the retry that passes the deadline.
            needed = math.floor((deadline - total) / high) + 1
            retry = retries_made + needed
            return retry if max_retries is None or retry <= max_retries else None
        total += high
        previous = high
        retries_made += 1
        if total > deadline:
            return retries_made
    return None
