"""Pacing of a bulk replay: ``--rate`` (a token bucket) and ``--spread`` (jittered ETAs over a window)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

__all__ = ["Spread", "TokenBucket", "parse_rate"]


def parse_rate(value: str | float | None) -> float | None:
    """``"200/s"``, ``"50/m"``, ``"1000/h"`` or a number (per second) -> records per second; None: unlimited."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        text = value.strip().lower()
        count, _, unit = text.partition("/")
        per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip())
        try:
            rate = float(count) / per if per else math.nan
        except ValueError:
            rate = math.nan
        if per is None or math.isnan(rate):
            msg = f"bad rate {value!r}: expected N/s, N/m or N/h, e.g. 200/s"
            raise ValueError(msg)
    if rate <= 0:
        msg = f"bad rate {value!r}: must be above 0"
        raise ValueError(msg)
    return rate


class TokenBucket:
    """A token bucket of ``rate`` tokens per second holding at most ``burst``; ``wait_s()`` says how long until
    the next token, ``take()`` spends one. Starts full, so the first ``burst`` records go at once."""

    def __init__(self, rate_per_s: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = max(1.0, burst)
        self.clock = clock
        self.tokens = self.burst
        self.at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def wait_s(self) -> float:
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        self._refill()
        self.tokens -= 1.0


class Spread:
    """ETAs over ``window_s`` from the start: slot i of n, jittered inside its slot (uniform when n is unknown)."""

    def __init__(self, window_s: float, planned: int | None) -> None:
        self.start = time.time()
        self.window_s = window_s
        self.planned = planned
        self.index = 0

    def next_eta(self) -> float:
        if self.planned:
            slot = self.window_s / self.planned
            offset = min(self.index, self.planned - 1) * slot + random.uniform(0, slot)
        else:
            offset = random.uniform(0, self.window_s)
        self.index += 1
        return self.start + offset
