"""The dead-letter store against a real redis-server: add, filtered and batched reads, trimming, outages, redaction."""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.servers import RedisServer

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter, RedisStreamStore, StoreUnavailableError, store_url_for
from celery_policy.resolve import load
from celery_policy.runtime.decision import Decision
from celery_policy.runtime.task_runtime import TaskRuntime


def record(task: str = "orders.charge", reason: str = "permanent", age_s: float = 0.0, **fields: Any) -> DeadLetter:
    now = time.time()
    values: dict[str, Any] = {
        "task": task,
        "task_id": f"id-{task}-{reason}-{age_s}",
        "args": [1, "two"],
        "kwargs": {"order_id": 7},
        "reason": reason,
        "exc_type": "proj.errors.PaymentDeclined",
        "exc_message": "card declined",
        "traceback": "Traceback (most recent call last):\n  ...\nPaymentDeclined: card declined\n",
        "attempts": 3,
        "first_failure": now - age_s - 5,
        "last_failure": now - age_s,
        "hostname": "w1@host",
        "queue": "orders",
        "policy_source": "policies/prod.yaml:12 (tasks.orders.charge)",
    }
    values.update(fields)
    return DeadLetter(**values)


@pytest.fixture
def store(clean_redis: RedisServer) -> RedisStreamStore:
    return RedisStreamStore(clean_redis.url, "test:dead")


def test_add_then_iter_returns_every_field_and_the_entry_id(store: RedisStreamStore) -> None:
    written = record()
    entry = store.add(written)

    (read,) = list(store.iter(Filter()))

    assert read.id == entry
    assert read.model_dump(exclude={"id"}) == written.model_dump(exclude={"id"})
    assert store.count() == 1


def test_iter_returns_records_oldest_first(store: RedisStreamStore) -> None:
    ids = [store.add(record(task=f"t.{n}")) for n in range(5)]

    assert [r.id for r in store.iter(Filter())] == ids
    assert [r.task for r in store.iter(Filter(), limit=2)] == ["t.0", "t.1"]


def test_filters_select_by_task_glob_reason_age_and_entry_id(store: RedisStreamStore) -> None:
    charge = store.add(record("orders.charge", "exhausted"))
    refund = store.add(record("orders.refund", "permanent"))
    report = store.add(record("reports.daily", "time_limit"))
    old = store.add(record("orders.ship", "permanent", age_s=7200))

    def ids(flt: Filter) -> list[str | None]:
        return [r.id for r in store.iter(flt)]

    assert ids(Filter(task="orders.*")) == [charge, refund, old]
    assert ids(Filter(task="orders.charge")) == [charge]
    assert ids(Filter(task="Orders.*")) == []  # case-sensitive, as task names are
    assert ids(Filter(reason="permanent")) == [refund, old]
    assert ids(Filter(since_s=3600)) == [charge, refund, report]
    assert ids(Filter(task="orders.*", reason="permanent", since_s=3600)) == [refund]
    assert ids(Filter(ids=(report, charge))) == [report, charge]
    assert ids(Filter(ids=(report,), reason="permanent")) == []
    assert ids(Filter(ids=("1-0",))) == []


def test_a_malformed_entry_id_matches_nothing_instead_of_looking_like_an_outage(store: RedisStreamStore) -> None:
    store.add(record())

    assert list(store.iter(Filter(ids=("not-an-id",)))) == []
    assert store.delete("not-an-id") is False


def test_iter_reads_past_one_batch_in_order_without_duplicates(store: RedisStreamStore) -> None:
    pipe = store.client.pipeline(transaction=False)
    for n in range(2500):
        payload = record(task=f"bulk.{n % 3}", task_id=f"t{n}").model_dump_json(exclude={"id"})
        pipe.xadd(store.stream, {"record": payload})
    pipe.execute()

    everything = list(store.iter(Filter()))
    assert [r.task_id for r in everything] == [f"t{n}" for n in range(2500)]
    assert len({r.id for r in everything}) == 2500

    small_batches = list(store.iter(Filter(task="bulk.1"), batch=7))
    assert [r.task_id for r in small_batches] == [f"t{n}" for n in range(1, 2500, 3)]
    # a limit is honoured across batch boundaries
    limited = [r.task_id for r in store.iter(Filter(task="bulk.2"), limit=400, batch=100)]
    assert limited == [f"t{n}" for n in range(2, 2500, 3)][:400]


def test_max_length_trims_approximately_and_keeps_the_newest(clean_redis: RedisServer) -> None:
    store = RedisStreamStore(clean_redis.url, "test:capped", max_length=100)
    for n in range(1000):
        store.add(record(task_id=f"t{n}"))

    length = store.count()
    kept = [r.task_id for r in store.iter(Filter())]
    # MAXLEN ~ trims whole stream nodes (100 entries each by default): never below the cap, never far above it
    assert 100 <= length < 300
    assert kept == [f"t{n}" for n in range(1000 - length, 1000)]


def test_a_stopped_server_raises_store_unavailable_for_every_operation_and_recovers(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    store = RedisStreamStore(server.url, "test:dead")
    entry = store.add(record())
    server.stop()

    operations: dict[str, Callable[[], Any]] = {
        "add": lambda: store.add(record()),
        "iter": lambda: list(store.iter(Filter())),
        "iter ids": lambda: list(store.iter(Filter(ids=(entry,)))),
        "delete": lambda: store.delete(entry),
        "count": store.count,
    }
    for name, operation in operations.items():
        started = time.monotonic()
        expected = rf"dead-letter store redis://127\.0\.0\.1:{server.port}/0 stream 'test:dead' unavailable"
        with pytest.raises(StoreUnavailableError, match=expected):
            operation()
        assert time.monotonic() - started < 5, f"{name} took too long to fail"

    server.start()  # no persistence: the record written before the outage is gone, the store works again
    assert store.count() == 0
    store.add(record())
    assert store.count() == 1


def test_describe_hides_the_password_of_the_store_url() -> None:
    store = RedisStreamStore("redis://admin:hunter2@cache.internal:6380/2", "dead")
    assert store.describe() == "redis://admin:***@cache.internal:6380/2 stream 'dead'"


def test_store_url_is_the_configured_one_else_a_redis_broker_else_none() -> None:
    assert store_url_for("redis://store:6379/1", "amqp://broker//") == "redis://store:6379/1"
    assert store_url_for(None, "redis://broker:6379/0") == "redis://broker:6379/0"
    assert store_url_for(None, "rediss://broker:6380/0") == "rediss://broker:6380/0"
    assert store_url_for(None, "amqp://guest@broker//") is None
    assert store_url_for(None, None) is None


# --- what the runtime writes: redaction ----------------------------------------------------------

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def policy_file(tmp_path: Path) -> Callable[[str], Path]:
    def write(log: str) -> Path:
        path = tmp_path / "policy.yaml"
        path.write_text(f"version: 1\ndefaults:\n  dead_letter: {{enabled: true}}\n  log: {log}\n")
        return path

    return write


def login(user: str, password: str, profile: dict[str, Any] | None = None) -> None:
    """The signature the runtime reads parameter names from (positional ``password`` is redacted by name)."""


def _write(runtime: TaskRuntime, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    request = types.SimpleNamespace(  # what the worker's task.request carries
        id="task-1", retries=0, headers={}, delivery_info={"routing_key": "auth"}, hostname="w1@host"
    )
    exc = ValueError("login rejected")
    decision = Decision(
        "dead_letter", "auth.login", "task-1", 1, None, None, "builtins.ValueError", "permanent", "p.yaml:3"
    )
    runtime.dead_letters.write(request, exc, args, kwargs, runtime.args.render(args, kwargs), 1, "permanent", decision)


def _raw_stream(store: RedisStreamStore) -> bytes:
    rows: list[tuple[bytes, dict[bytes, bytes]]] = store.client.xrange(store.stream)  # type: ignore[assignment]
    return b"".join(fields[b"record"] for _, fields in rows)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param(("ann", SECRET), {}, id="positional-by-parameter-name"),
        pytest.param(("ann",), {"password": SECRET}, id="keyword"),
        pytest.param(("ann", "x"), {"profile": {"card": {"Token": SECRET}}}, id="nested-key-any-case"),
    ],
)
def test_redacted_arguments_never_reach_the_store_and_the_record_is_not_replayable(
    clean_redis: RedisServer, policy_file: Callable[[str], Path], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    policy = load([policy_file("{args: redact, redact_keys: [password, token]}")], check_imports=False)
    runtime = TaskRuntime(policy.for_task("auth.login"), login)
    store = runtime.dead_letters.store = RedisStreamStore(clean_redis.url, "test:dead")

    _write(runtime, args, kwargs)

    (stored,) = list(store.iter(Filter()))
    assert SECRET.encode() not in _raw_stream(store)
    assert "***" in stored.model_dump_json()
    assert stored.args[0] == "ann"
    assert stored.replayable is False


def test_unredacted_arguments_are_stored_as_they_were_and_stay_replayable(
    clean_redis: RedisServer, policy_file: Callable[[str], Path]
) -> None:
    policy = load([policy_file("{args: redact, redact_keys: [password]}")], check_imports=False)
    runtime = TaskRuntime(policy.for_task("auth.login"), login)
    store = runtime.dead_letters.store = RedisStreamStore(clean_redis.url, "test:dead")

    _write(runtime, ("ann", "pw-is-not-a-secret-here"), {"profile": {"age": 40, "tags": ["a", "b"]}})

    (stored,) = list(store.iter(Filter()))
    assert stored.args == ["ann", "***"]  # positional password is still redacted by name
    assert stored.replayable is False

    # a fresh stream; the once-only marker of the first write goes too (same task id, attempt and reason)
    store.client.delete(store.stream, *store.client.keys("{test:dead}:recorded:*"))
    _write(runtime, ("ann",), {"profile": {"age": 40, "tags": ["a", "b"]}})
    (stored,) = list(store.iter(Filter()))
    assert (stored.args, stored.kwargs) == (["ann"], {"profile": {"age": 40, "tags": ["a", "b"]}})
    assert stored.replayable is True
    assert (stored.queue, stored.hostname, stored.task_id, stored.reason) == ("auth", "w1@host", "task-1", "permanent")


def test_hidden_arguments_store_nothing_and_are_not_replayable(
    clean_redis: RedisServer, policy_file: Callable[[str], Path]
) -> None:
    policy = load([policy_file("{args: hide}")], check_imports=False)
    runtime = TaskRuntime(policy.for_task("auth.login"), login)
    store = runtime.dead_letters.store = RedisStreamStore(clean_redis.url, "test:dead")

    _write(runtime, ("ann", SECRET), {})

    (stored,) = list(store.iter(Filter()))
    assert (stored.args, stored.kwargs, stored.replayable) == ([], {}, False)
    assert SECRET.encode() not in _raw_stream(store)


def test_the_same_failure_is_recorded_once_even_when_written_twice(redis_server_factory: Any) -> None:
    """A worker killed between the write and the ack writes again on redelivery: one record, not two."""
    server = redis_server_factory()
    store = RedisStreamStore(server.url, "dedupe:dead")
    first = DeadLetter(
        task="orders.charge", task_id="t-1", reason="permanent", exc_type="builtins.ValueError",
        attempts=1, first_failure=1.0, last_failure=1.0,
    )  # fmt: skip
    assert store.add(first)
    assert store.add(first.model_copy(update={"last_failure": 2.0})) == ""
    assert store.add(
        first.model_copy(update={"attempts": 2, "reason": "exhausted"})
    )  # a later attempt is its own failure
    anonymous = first.model_copy(update={"task_id": None})  # no id: nothing to deduplicate on
    assert store.add(anonymous)
    assert store.add(anonymous)
    assert store.count() == 4  # first, the later attempt, and both anonymous records
