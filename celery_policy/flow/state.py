"""Breaker and limit state in Redis, with the per-process cache that keeps a closed breaker off the network.

A :class:`Breaker` answers :meth:`Breaker.admit` before each call:

- ``None``: run the body (closed). While the cached answer is fresh
  (``flow_store.cache_for``) this is a clock read and a comparison; successes are
  counted in the process and sent with the next refresh, so a closed breaker costs
  one Redis round trip per process per ``cache_for``, not one per call.
- :data:`PROBE`: run the body as one of the ``half_open_calls`` probes; report the
  outcome with :meth:`Breaker.probe_done`.
- a float: the breaker is open (or half-open with every probe given out); snooze
  about that many seconds.

A counted failure is sent at once (the failure path may pay a round trip): that
is what opens the breaker after ``min_calls`` calls instead of a cache period later.
Every change of state is made by one Lua call (:mod:`._lua`), and the one call
that made it reports it, so each transition is logged once for the whole fleet.
If Redis cannot be reached the breaker lets calls through (fails open) and
says so in the log, at most every 10 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from celery_policy.flow._lua import BREAKER, LIMIT
from celery_policy.model import BreakerSettings, LimitSettings

PROBE = "probe"
WINDOW_BUCKETS = 10  # the failure-rate window is counted in this many slices
STATE_TTL_S = 7 * 86400  # a breaker nobody used for a week starts closed again
HALF_OPEN_WAIT_FACTOR = 0.5  # while the probes run, other calls snooze this share of open_for
_WARN_EVERY_S = 10.0

__all__ = ["PROBE", "Breaker", "BreakerState", "Limit", "breaker_key", "limit_key"]

StateListener = Callable[["BreakerState", str], None]  # (new state, how it changed: "auto" | "forced")


def breaker_key(prefix: str, name: str) -> tuple[str, str]:
    """The state hash and window hash of a breaker (one Redis Cluster slot: the name is the hash tag)."""
    return f"{prefix}:breaker:{{{name}}}", f"{prefix}:breaker:{{{name}}}:window"


def limit_key(prefix: str, name: str) -> str:
    return f"{prefix}:limit:{{{name}}}"


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One answer of the breaker script."""

    name: str
    state: str  # closed | open | half_open
    since: float  # epoch seconds (Redis clock) of the last change
    open_remaining_s: float
    calls: int  # calls in the window (closed only)
    failures: int
    changed_to: str  # the state this call moved the breaker to, or ""
    verdict: str  # acquire: run | probe | wait
    forced: bool
    rate_at_open: float | None

    @property
    def failure_rate(self) -> float | None:
        if self.state != "closed":
            return self.rate_at_open
        return self.failures / self.calls if self.calls else None

    @classmethod
    def parse(cls, name: str, reply: Any) -> BreakerState:
        state, since, remaining, calls, fails, changed, verdict, forced, rate = (_text(v) for v in reply)
        return cls(
            name,
            state,
            float(since),
            float(remaining),
            int(calls),
            int(fails),
            changed,
            verdict,
            forced == "open",
            float(rate) if rate else None,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Warner:
    def __init__(self) -> None:
        self._last = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < _WARN_EVERY_S:
            return False
        self._last = now
        return True


class Breaker:
    """One named breaker as seen by one process (see the module docstring)."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        client: Any,
        prefix: str,
        cache_for_s: float,
        on_change: StateListener | None = None,
        on_unavailable: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.client = client
        self.keys = breaker_key(prefix, name)
        self.cache_for_s = cache_for_s
        self.on_change = on_change
        self.on_unavailable = on_unavailable
        self._script = client.register_script(BREAKER)
        self._args = (
            settings.window,
            WINDOW_BUCKETS,
            settings.failure_rate,
            settings.min_calls,
            settings.open_for,
            settings.half_open_calls,
            STATE_TTL_S,
        )
        self._closed_until = 0.0  # monotonic: trust "closed" until then
        self._wait_until = 0.0  # monotonic: trust "open/half-open, snooze" until then
        self._half_open_wait_s = settings.open_for * HALF_OPEN_WAIT_FACTOR
        self._open_ends = 0.0
        self._known = "closed"  # monotonic time the open period ends (as last heard)
        self._pending = 0  # successes counted here, not yet sent
        self._warn = _Warner()

    # -- the hot path --------------------------------------------------------------------------

    def admit(self) -> float | str | None:
        """None = run; :data:`PROBE` = run as a probe; seconds = snooze that long."""
        now = time.monotonic()
        if now < self._closed_until:
            return None
        if now < self._wait_until:
            return self._wait(now)
        return self._refresh(now)

    def succeeded(self) -> None:
        """A call admitted with ``None`` succeeded (counted here, sent with the next refresh)."""
        self._pending += 1

    def failed(self) -> None:
        """A call admitted with ``None`` failed with an error the breaker counts: sent at once."""
        pending, self._pending = self._pending, 0
        reply = self._call("report", pending, 1)
        if reply is not None:
            self._remember(reply, time.monotonic())

    def probe_done(self, outcome: bool | None) -> None:
        """A probe's outcome: True succeeded, False failed (counted), None neither (the permit is given back)."""
        op = "probe_ok" if outcome else "probe_fail" if outcome is False else "probe_release"
        reply = self._call(op, 0, 0)
        if reply is not None:
            self._remember(reply, time.monotonic())

    # -- operators -----------------------------------------------------------------------------

    def read(self) -> BreakerState:
        """The shared state (raises redis errors: for the CLI)."""
        return BreakerState.parse(self.name, self._script(keys=self.keys, args=("get", 0, 0, *self._args)))

    def force(self, state: str) -> BreakerState:
        """``open`` (stays open until forced closed) or ``closed``; raises redis errors."""
        op = {"open": "force_open", "closed": "force_close"}[state]
        found = BreakerState.parse(self.name, self._script(keys=self.keys, args=(op, 0, 0, *self._args)))
        if self.on_change is not None:
            self.on_change(found, "forced")
        return found

    # -- internals -----------------------------------------------------------------------------

    def _refresh(self, now: float) -> float | str | None:
        reply = None
        if self._known == "closed" or self._pending:
            pending, self._pending = self._pending, 0
            reply = self._call("report", pending, 0)
        if reply is None or reply.state != "closed":
            reply = self._call("acquire", 0, 0)
        if reply is None:  # Redis is down: fail open for one cache period
            self._closed_until = now + self.cache_for_s
            return None
        self._remember(reply, now)
        if reply.verdict == PROBE:
            return PROBE
        if reply.state == "closed":
            return None
        return self._wait(now)

    def _wait(self, now: float) -> float:
        """Snooze time: what is left of the open period, else (half-open) a share of open_for."""
        return self._open_ends - now if self._open_ends > now else self._half_open_wait_s

    def _remember(self, reply: BreakerState, now: float) -> None:
        self._known = reply.state
        if reply.state == "closed":
            self._closed_until = now + self.cache_for_s
            self._wait_until = 0.0
            self._open_ends = 0.0
        else:
            self._closed_until = 0.0
            self._open_ends = now + reply.open_remaining_s
            # trusted for one cache period (and never past the end of the open period), so a forced
            # close or the move to half-open is seen soon
            ends = reply.open_remaining_s if reply.open_remaining_s > 0 else self.cache_for_s
            self._wait_until = now + min(self.cache_for_s, ends)
        if reply.changed_to and self.on_change is not None:
            self.on_change(reply, "auto")

    def _call(self, op: str, successes: int, failures: int) -> BreakerState | None:
        try:
            return BreakerState.parse(
                self.name, self._script(keys=self.keys, args=(op, successes, failures, *self._args))
            )
        except (redis.RedisError, OSError) as exc:
            if self.on_unavailable is not None and self._warn.due():
                self.on_unavailable(self.name, exc)
            return None


class Limit:
    """One named token bucket, shared by the fleet: :meth:`take` reserves the next free token if it is near."""

    def __init__(
        self,
        name: str,
        settings: LimitSettings,
        client: Any,
        prefix: str,
        on_unavailable: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.key = limit_key(prefix, name)
        self.interval_s = 1.0 / settings.per_second
        self.tolerance_s = (settings.burst - 1) * self.interval_s
        self.on_unavailable = on_unavailable
        self._script = client.register_script(LIMIT)
        self._warn = _Warner()

    def take(self, max_wait_s: float) -> tuple[float, bool]:
        """``(wait_s, granted)``: granted = this call's token is reserved ``wait_s`` from now (0 = now);
        refused = the next free token is ``wait_s`` away, more than ``max_wait_s`` (nothing is reserved).

        When Redis cannot be reached the call runs (``(0.0, True)``): a limiter outage must not stop the work.
        """
        try:
            granted, wait = self._script(keys=(self.key,), args=(self.interval_s, self.tolerance_s, max_wait_s))
        except (redis.RedisError, OSError) as exc:
            if self.on_unavailable is not None and self._warn.due():
                self.on_unavailable(self.name, exc)
            return 0.0, True
        return float(_text(wait)), _text(granted) == "1"
