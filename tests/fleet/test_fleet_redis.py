"""Store URLs for Redis Sentinel and Redis Cluster, against a real 3-master cluster and a real sentinel set.

The topologies start once per module on loopback ports (tests/support/apps/fleet/topologies.py).
Every test runs against both: the dead-letter stream, the redelivery counter and the
idempotency keys, then one worker per topology whose ``dead_letter_store.url`` is the
cluster or sentinel URL.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Reject
from redis.cluster import RedisCluster
from support.topologies import RedisClusterSet, SentinelSet

import celery_policy
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter, RedisStreamStore, StoreUnavailableError
from celery_policy.errors import PolicyError
from celery_policy.model import IdempotencyPolicy
from celery_policy.redis_urls import RedisUrlError, client_from_url, safe_url
from celery_policy.runtime.idempotency import IdempotencyGuard
from celery_policy.runtime.install import runtime_for

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "tests" / "support" / "apps" / "fleet"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    topology = RedisClusterSet(tmp_path_factory.mktemp("cluster"))
    try:
        yield topology.start()
    finally:
        topology.close()


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    topology = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    try:
        yield topology.start()
    finally:
        topology.close()


@pytest.fixture(params=["cluster", "sentinel"])
def store_url(request: pytest.FixtureRequest) -> str:
    topology: RedisClusterSet | SentinelSet = request.getfixturevalue(request.param)
    return topology.url


# --- URL parsing (no server needed) -------------------------------------------------------------


def test_sentinel_url_names_sentinels_service_db_and_master_password() -> None:
    client = client_from_url("redis+sentinel://:s3cret@127.0.0.1:26379,[::1]:26380/cache/2?sentinel_password=sp")
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert pool.service_name == "cache"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "s3cret"
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert [s.connection_pool.connection_kwargs["host"] for s in sentinels] == ["127.0.0.1", "::1"]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sp"


def test_a_rediss_sentinel_url_talks_tls_to_the_master_and_a_redis_one_does_not() -> None:
    """``rediss+sentinel://`` uses TLS (README, "Running a fleet"); nothing connects until a command is sent."""
    plain = client_from_url("redis+sentinel://127.0.0.1:26379/cache")
    tls = client_from_url("rediss+sentinel://127.0.0.1:26379/cache")

    assert not issubclass(plain.connection_pool.connection_class, redis.SSLConnection)
    assert issubclass(tls.connection_pool.connection_class, redis.SSLConnection)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://127.0.0.1:26379", "needs the service name"),
        ("redis+sentinel://127.0.0.1:26379/cache/x", "bad database number 'x'"),
        ("redis+sentinel://127.0.0.1/cache", "needs a port"),
        ("redis+cluster://127.0.0.1:7000/3", "only database 0"),
        ("redis+cluster:///0", "no host"),
        ("memcached://127.0.0.1:11211", "unsupported store URL scheme 'memcached'"),
    ],
)
def test_malformed_store_urls_are_rejected_with_the_expected_format(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=message):
        client_from_url(url)


def test_safe_url_hides_passwords_in_every_format() -> None:
    assert safe_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert safe_url("redis+cluster://u:pw@a:1,b:2") == "redis+cluster://u:***@a:1,b:2"
    assert (
        safe_url("redis+sentinel://a:1/m/0?sentinel_password=x&y=1")
        == "redis+sentinel://a:1/m/0?sentinel_password=***&y=1"
    )
    assert safe_url("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock?db=1"


def test_plain_urls_still_give_a_plain_client(clean_redis: Any) -> None:
    client = client_from_url(clean_redis.url_for(3))
    assert isinstance(client, redis.Redis)
    client.set("k", "v")
    assert clean_redis.client(3).get("k") == b"v"


# --- the three Redis uses, on a cluster and on a sentinel set -----------------------------------


def _record(task: str) -> DeadLetter:
    return DeadLetter.model_validate(
        {
            "task": task,
            "task_id": str(uuid.uuid4()),
            "args": [1],
            "kwargs": {},
            "reason": "permanent",
            "exc_type": "builtins.ValueError",
            "exc_message": "bad",
            "traceback": "",
            "attempts": 1,
            "first_failure": 1.0,
            "last_failure": 2.0,
            "hostname": "w@h",
            "queue": "celery",
        }
    )


def test_dead_letter_store_adds_lists_and_deletes(store_url: str) -> None:
    stream = f"celery-policy:dead:{uuid.uuid4().hex}"
    store = RedisStreamStore(store_url, stream, max_length=1000)
    first = store.add(_record("orders.charge"))
    store.add(_record("reports.daily"))
    assert store.count() == 2
    assert [r.task for r in store.iter(Filter(task="orders.*"))] == ["orders.charge"]
    assert [r.id for r in store.iter(Filter(ids=(first,)))] == [first]
    assert store.delete(first) is True
    assert [r.task for r in store.iter(Filter())] == ["reports.daily"]


def test_idempotency_lock_and_done_keys_share_a_slot(store_url: str) -> None:
    client = RedisStreamStore(store_url).client
    guard = IdempotencyGuard(IdempotencyPolicy(key="charge:{kwargs[order_id]}"), "orders.charge", client, 30.0)
    order = uuid.uuid4().hex
    first = guard.enter("task-1", (), {"order_id": order})
    assert (first.duplicate, first.busy) == (False, False)
    assert guard.enter("task-2", (), {"order_id": order}).busy is True  # the lock is held
    guard.success(first, {"charged": 5})
    again = guard.enter("task-3", (), {"order_id": order})
    assert (again.duplicate, again.result) == (True, {"charged": 5})
    assert client.get(first.key + ":lock") is None  # released by the Lua script (one key)
    if isinstance(client, RedisCluster):
        slots = {client.keyslot(first.key + suffix) for suffix in (":lock", ":done")}  # type: ignore[no-untyped-call]
        assert len(slots) == 1


def test_redelivery_counter_caps_and_dead_letters(store_url: str, tmp_path: Path) -> None:
    """The counter pipeline (INCR + EXPIRE of one key) and the dead letter past the cap, in-process."""
    stream = f"celery-policy:dead:{uuid.uuid4().hex}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "defaults:\n"
        "  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 1}\n"
        "  dead_letter: {enabled: true}\n"
        f"dead_letter_store: {{url: '{store_url}', stream: '{stream}'}}\n"
    )
    app = Celery("counter", broker="memory://", task_cls=celery_policy.PolicyTask)
    celery_policy.install(app, policy)

    name = f"fleet.poison_{uuid.uuid4().hex[:8]}"

    @app.task(name=name, shared=False)  # type: ignore[untyped-decorator]
    def poison() -> None:
        return None

    app.finalize()
    task = app.tasks[name]
    runtime = runtime_for(app)
    assert runtime is not None
    task_runtime = runtime.tasks[name]
    task_id = str(uuid.uuid4())
    task.push_request(id=task_id, retries=0, delivery_info={"redelivered": True}, hostname="w@h")
    try:
        task_runtime.check_redelivery(task, (), {})  # the first redelivery is within the cap
        with pytest.raises(Reject):
            task_runtime.check_redelivery(task, (), {})
    finally:
        task.pop_request()
    client = runtime.store().client
    assert int(client.get(f"celery-policy:dlv:{{{task_id}}}:0") or 0) == 2
    assert 0 < int(client.ttl(f"celery-policy:dlv:{{{task_id}}}:0")) <= 7 * 86400
    records = list(RedisStreamStore(store_url, stream).iter(Filter()))
    assert [(r.task, r.task_id, r.reason) for r in records] == [(name, task_id, "redelivery_limit")]


def test_sentinel_store_follows_a_failover(sentinel: SentinelSet) -> None:
    """The master dies; the same store (same client) writes to the replica the sentinel promoted."""
    stream = f"celery-policy:dead:{uuid.uuid4().hex}"
    store = RedisStreamStore(sentinel.url, stream)
    store.add(_record("before.failover"))
    new_port = sentinel.kill_master()
    assert sentinel.replica is not None
    assert new_port == sentinel.replica.port
    for _ in range(50):  # the pooled connection to the dead master fails once, then the pool asks the sentinel
        try:
            store.add(_record("after.failover"))
            break
        except StoreUnavailableError:
            time.sleep(0.1)
    assert [r.task for r in store.iter(Filter())] == ["before.failover", "after.failover"]
    assert sentinel.replica.client().xlen(stream) == 2


def test_unreachable_cluster_stops_boot_with_the_policy_location(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "defaults: {dead_letter: {enabled: true}}\n"
        "dead_letter_store: {url: 'redis+cluster://127.0.0.1:1'}\n"
    )
    app = Celery("down", broker="memory://", task_cls=celery_policy.PolicyTask)

    @app.task(name="down.t", shared=False)  # type: ignore[untyped-decorator]
    def t() -> None:
        return None

    app.finalize()
    with pytest.raises(PolicyError, match=r"dead-letter store redis\+cluster://127\.0\.0\.1:1 .*policy\.yaml:3"):
        celery_policy.install(app, policy)


# --- end to end: a real worker whose store is a cluster or a sentinel set -----------------------


@pytest.mark.worker
def test_worker_dead_letters_and_deduplicates_through_the_store_url(
    store_url: str, clean_redis: Any, celery_worker_process: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = f"celery-policy:dead:{uuid.uuid4().hex}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        (FLEET / "policy_v1.yaml").read_text() + f"dead_letter_store: {{url: '{store_url}', stream: '{stream}'}}\n"
    )
    env = {"CELERY_BROKER_URL": clean_redis.url, "CELERY_POLICY_FILE": str(policy)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("tests.support.apps.fleet.fleetapp", None)
    fleetapp = importlib.import_module("tests.support.apps.fleet.fleetapp")
    celery_worker_process("tests.support.apps.fleet.fleetapp", pool="prefork", cwd=ROOT, env=env)

    order = uuid.uuid4().hex
    assert fleetapp.charge.delay(order_id=order, amount=5).get(timeout=30) == {"charged": 5}
    assert fleetapp.charge.delay(order_id=order, amount=9).get(timeout=30) == {"charged": 5}  # the stored result
    assert int(clean_redis.client().get(f"runs:{order}")) == 1
    store = RedisStreamStore(store_url, stream)
    done = store.client.get(f"celery-policy:idem:{{charge:{order}}}:done")
    assert done is not None
    assert json.loads(done)["result"] == {"charged": 5}

    result = fleetapp.fail.delay("card declined")
    with pytest.raises(Exception, match="card declined"):
        result.get(timeout=30)
    records = list(store.iter(Filter(task="fleet.fail")))
    assert [(r.task_id, r.reason, r.exc_message) for r in records] == [(result.id, "permanent", "card declined")]


@pytest.mark.worker
def test_a_worker_caps_redeliveries_with_the_counter_on_the_store_url(
    store_url: str, clean_redis: Any, celery_worker_process: Any, tmp_path: Path
) -> None:
    """A poison pill kills its pool process every time: the counter (on the cluster or sentinel) stops it."""
    from support.harness import RTAPP, Journal, new_key, producer, wait_record

    stream = f"celery-policy:dead:{uuid.uuid4().hex}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "defaults:\n"
        "  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 1}\n"
        "  dead_letter: {enabled: true}\n"
        f"dead_letter_store: {{url: '{store_url}', stream: '{stream}'}}\n"
    )
    env = {"RT_BROKER_URL": clean_redis.url, "CELERY_POLICY_FILE": str(policy)}
    celery_worker_process(RTAPP, pool="prefork", broker_url=clean_redis.url, cwd=ROOT, env=env)
    key = new_key()
    task_id = str(producer(clean_redis.url).send_task("rt.crasher", args=(key, 100)).id)

    store = RedisStreamStore(store_url, stream)
    record = wait_record(store, task_id, timeout=60)
    assert (record.task, record.reason) == ("rt.crasher", "redelivery_limit")
    # the first delivery and max_redeliveries (1) redeliveries ran; the next redelivery was stopped before the body
    assert len(Journal(clean_redis.client()).entries(key)) == 2
    assert int(store.client.get(f"celery-policy:dlv:{{{task_id}}}:0") or 0) == 2
