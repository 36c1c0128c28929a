"""Breaker and limit state on a real redis-server: the Lua scripts and the per-process cache."""

from __future__ import annotations

import time
from typing import Any

from support.servers import RedisServer

from celery_policy.flow.state import PROBE, Breaker, BreakerState, Limit
from celery_policy.model import BreakerSettings, LimitSettings

SETTINGS = BreakerSettings(failure_rate=0.5, min_calls=4, window=10.0, open_for=0.6, half_open_calls=2)


def _breaker(server: RedisServer, cache_for_s: float = 0.2, **kwargs: Any) -> Breaker:
    return Breaker("payments", SETTINGS, server.client(), "t", cache_for_s, **kwargs)


def test_a_closed_breaker_admits_without_a_round_trip_within_the_cache_period(clean_redis: RedisServer) -> None:
    breaker = _breaker(clean_redis, cache_for_s=5.0)
    assert breaker.admit() is None  # first call: one refresh
    monitor = clean_redis.client()
    before = int(monitor.info("stats")["total_commands_processed"])
    for _ in range(1000):
        assert breaker.admit() is None
        breaker.succeeded()
    after = int(monitor.info("stats")["total_commands_processed"])
    assert after - before == 1  # only the INFO call itself


def test_failures_open_the_breaker_at_min_calls_and_rate_for_every_process(clean_redis: RedisServer) -> None:
    changes: list[tuple[str, str]] = []
    first = _breaker(clean_redis, on_change=lambda state, how: changes.append((state.changed_to, how)))
    second = _breaker(clean_redis)
    assert first.admit() is None
    first.succeeded()
    first.succeeded()  # 2 successes, sent with the first failure
    first.failed()  # 3 calls
    assert first.admit() is None
    first.failed()  # 4 calls, 2 failures: 50% -> open
    assert changes == [("open", "auto")]
    wait = first.admit()
    assert isinstance(wait, float)
    assert 0.3 < wait <= 0.6
    assert isinstance(second.admit(), float)  # another process sees it on its first refresh
    state = first.read()
    assert (state.state, state.failure_rate) == ("open", 0.5)


def test_half_open_gives_out_half_open_calls_probes_and_their_successes_close_it(clean_redis: RedisServer) -> None:
    changes: list[str] = []
    breaker = _breaker(clean_redis, on_change=lambda state, how: changes.append(state.changed_to))
    other = _breaker(clean_redis, on_change=lambda state, how: changes.append(state.changed_to))
    for _ in range(4):
        breaker.admit()
        breaker.failed()
    time.sleep(0.65)
    assert breaker.admit() == PROBE
    assert other.admit() == PROBE
    third = _breaker(clean_redis)
    assert isinstance(third.admit(), float)  # both probes are out
    breaker.probe_done(True)
    assert breaker.read().state == "half_open"
    other.probe_done(True)
    assert breaker.read().state == "closed"
    assert changes == ["open", "half_open", "closed"]


def test_a_failed_probe_opens_the_breaker_again(clean_redis: RedisServer) -> None:
    breaker = _breaker(clean_redis)
    for _ in range(4):
        breaker.admit()
        breaker.failed()
    time.sleep(0.65)
    assert breaker.admit() == PROBE
    breaker.probe_done(False)
    state = breaker.read()
    assert state.state == "open"
    assert state.open_remaining_s > 0.4


def test_a_forced_open_breaker_stays_open_until_forced_closed(clean_redis: RedisServer) -> None:
    operator = _breaker(clean_redis)
    operator.force("open")
    worker = _breaker(clean_redis)
    assert isinstance(worker.admit(), float)
    time.sleep(0.7)  # past open_for: a forced breaker does not half-open
    assert isinstance(_breaker(clean_redis).admit(), float)
    assert operator.read().forced
    operator.force("closed")
    assert _breaker(clean_redis).admit() is None


def test_a_breaker_without_redis_lets_calls_through_and_says_so(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    problems: list[str] = []
    breaker = Breaker(
        "payments", SETTINGS, server.client(retry=None), "t", 0.2, on_unavailable=lambda n, e: problems.append(n)
    )
    server.stop()
    assert breaker.admit() is None
    breaker.failed()
    assert problems == ["payments"]


def test_breaker_state_parses_bytes_replies() -> None:
    reply = [b"open", b"1.5", b"2.0", 0, 0, b"open", b"wait", b"", b"0.7500"]
    state = BreakerState.parse("x", reply)
    assert (state.state, state.open_remaining_s, state.failure_rate, state.forced) == ("open", 2.0, 0.75, False)


def test_a_limit_hands_out_tokens_at_its_rate_across_clients(clean_redis: RedisServer) -> None:
    settings = LimitSettings(rate="10/s", burst=2)
    one = Limit("api", settings, clean_redis.client(), "t")
    two = Limit("api", settings, clean_redis.client(), "t")
    taken = [one.take(60.0), two.take(60.0), one.take(60.0), two.take(60.0), one.take(60.0)]
    assert [granted for _, granted in taken] == [True] * 5
    assert [w for w, _ in taken[:2]] == [0.0, 0.0]  # the burst
    assert [round(w, 1) for w, _ in taken[2:]] == [0.1, 0.2, 0.3]  # then one token every 100 ms, shared


def test_a_limit_refuses_without_reserving_when_the_wait_passes_max_wait(clean_redis: RedisServer) -> None:
    limit = Limit("api", LimitSettings(rate="1/s"), clean_redis.client(), "t")
    assert limit.take(10.0) == (0.0, True)
    wait, granted = limit.take(0.5)
    assert not granted  # the next token is 1 s away
    assert 0.9 < wait <= 1.0
    wait, granted = limit.take(10.0)
    assert granted
    assert 0.9 < wait <= 1.0  # the refused call did not take the token


def test_a_state_change_is_reported_by_the_call_that_made_it_and_becomes_a_span_event(
    clean_redis: RedisServer,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from celery_policy.runtime.flow import breaker_event
    from celery_policy.runtime.observability import FLOW_SPAN_EVENT

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: list[str] = []

    def report(state: BreakerState, how: str) -> None:
        seen.append(state.state)
        breaker_event(state, how)

    breaker = _breaker(clean_redis, on_change=report)
    other = _breaker(clean_redis, on_change=lambda state, how: seen.append(f"other:{state.state}"))
    with provider.get_tracer("test").start_as_current_span("run/shop.charge"):
        for _ in range(4):
            breaker.admit()
            breaker.failed()
        other.admit()  # learns of the open state, did not make it: no event
    assert seen == ["open"]
    (span,) = exporter.get_finished_spans()
    (event,) = [e for e in span.events if e.name == FLOW_SPAN_EVENT]
    assert event.attributes is not None
    assert (event.attributes["celery_policy.breaker"], event.attributes["celery_policy.state"]) == ("payments", "open")
    assert event.attributes["celery_policy.failure_rate"] == 1.0
