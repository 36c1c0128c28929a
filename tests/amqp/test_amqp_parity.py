"""One policy file, two brokers, the same dead letters (issue: RabbitMQ dead-lettering and delivery limits).

The same app (``tests/support/apps/amqp/brokerapp.py``) and the same policy
(``tests/support/apps/amqp/policy.yaml``) run once with a Redis broker (dead letters in a
Redis stream, the poison-pill cap counted in Redis) and once with RabbitMQ
(``dead_letter_store.backend: auto`` picks the broker's ``celery.dead`` queue, and
``ack.max_redeliveries`` becomes the quorum queue's ``x-delivery-limit``, so the
broker itself stops the poison pill). ``celery-policy dlq list`` must then show
the same records, field for field, and the journal the same executions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from support.harness import (
    AMQP_POLICY,
    BROKERAPP,
    QUORUM_REASON,
    amqp_runs,
    amqp_worker_env,
    new_key,
)
from support.rabbit import queue_messages
from support.servers import REPO_ROOT, RedisServer, WorkerProcess, wait_for

from celery_policy.cli import main
from celery_policy.support import celery_consumes_quorum_queues

pytest_plugins = ["support.rabbit"]  # rabbit_broker, rabbit_vhost, fresh_vhost

WorkerFactory = Callable[..., WorkerProcess]  # tests/conftest.py celery_worker_process

pytestmark = pytest.mark.worker

HOSTNAME = "parity@localhost"
COMPARED = ("task", "task_id", "args", "kwargs", "replayable", "reason", "exc_type", "exc_message", "attempts", "queue")


@dataclass(frozen=True)
class Broker:
    name: str
    url: str  # the broker; with backend auto also where `dlq` finds the dead letters


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, clean_redis: RedisServer) -> Broker:
    if request.param == "redis":
        return Broker("redis", clean_redis.url)
    if not celery_consumes_quorum_queues():
        pytest.skip(QUORUM_REASON)
    vhost = request.getfixturevalue("fresh_vhost")
    return Broker("rabbitmq", vhost.url)


def dlq_records(capsys: pytest.CaptureFixture[str], url: str) -> list[dict[str, Any]]:
    """``celery-policy dlq list --format json`` for the policy file, on the store behind ``url``."""
    capsys.readouterr()
    code = main(["dlq", "list", "--format", "json", "--file", str(AMQP_POLICY), "--url", url])
    out, err = capsys.readouterr()
    assert code == 0, err
    return list(json.loads(out)["records"])


def test_the_same_policy_dead_letters_a_poison_pill_and_a_permanent_failure_alike_on_redis_and_rabbitmq(
    broker: Broker,
    clean_redis: RedisServer,
    celery_worker_process: WorkerFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the policy names tests.support.apps.amqp.brokerapp.Permanent
    journal = clean_redis.client()
    worker = celery_worker_process(
        BROKERAPP,
        pool="prefork",  # the poison pill kills a pool process, not the worker
        hostname=HOSTNAME,
        env=amqp_worker_env(broker.url, clean_redis.url),
        cwd=REPO_ROOT,
        pythonpath=(REPO_ROOT,),
    )
    producer = Celery("parity-producer", broker=broker.url)
    crash_key, permanent_key = new_key("crash"), new_key("permanent")
    # declare=[]: the worker declared the queue with the policy's arguments; a plain producer must not redeclare it
    crash_id = producer.send_task("cp.crash", args=[crash_key], queue="celery", declare=[]).id
    permanent_id = producer.send_task(
        "cp.permanent", args=[permanent_key], kwargs={"amount": 7}, queue="celery", declare=[]
    ).id

    def both() -> dict[str, dict[str, Any]] | None:
        found = {r["task_id"]: r for r in dlq_records(capsys, broker.url)}
        return found if {crash_id, permanent_id} <= set(found) else None

    records = wait_for("both dead letters", both, timeout=60, interval=0.5)
    assert len(records) == 2

    crash, permanent = records[crash_id], records[permanent_id]
    assert {k: crash[k] for k in COMPARED} == {
        "task": "cp.crash",
        "task_id": crash_id,
        "args": [crash_key],
        "kwargs": {},
        "replayable": True,
        "reason": "redelivery_limit",
        "exc_type": "builtins.RuntimeError",
        "exc_message": "message redelivered 3 times after lost workers (max_redeliveries=2)",
        "attempts": 1,
        "queue": "celery",
    }
    assert {k: permanent[k] for k in COMPARED} == {
        "task": "cp.permanent",
        "task_id": permanent_id,
        "args": [permanent_key],
        "kwargs": {"amount": 7},
        "replayable": True,
        "reason": "permanent",
        "exc_type": "tests.support.apps.amqp.brokerapp.Permanent",
        "exc_message": "invalid amount 7",
        "attempts": 1,
        "queue": "celery",
    }
    assert permanent["hostname"] == HOSTNAME
    assert "tests/support/apps/amqp/policy.yaml:" in permanent["policy_source"]
    assert "Permanent: invalid amount 7" in permanent["traceback"]
    for record in (crash, permanent):
        assert record["first_failure"] <= record["last_failure"] <= time.time() + 1

    # the poison pill ran exactly three times (the first delivery and two redeliveries), each killing its process
    executions = amqp_runs(journal, crash_key)
    assert [e["redelivered"] for e in executions] == [False, True, True]
    assert len({e["pid"] for e in executions}) == 3
    assert len(amqp_runs(journal, permanent_key)) == 1

    # nothing is left to run: no copy of the message is in the queue or held by a worker, and the worker
    # logged "received" for each delivery before it left the broker, so the count below is final
    if broker.name == "redis":
        wait_for("an empty queue", lambda: journal.llen("celery") == 0 and journal.hlen("unacked") == 0, 10)
    else:
        vhost = broker.url.rsplit("/", 1)[1]
        wait_for("an empty queue", lambda: queue_messages(vhost, "celery") == 0, 10)
    received = len(re.findall(rf"Task cp\.crash\[{re.escape(crash_id)}\] received", worker.log_text()))
    # Redis: the counter stops the third redelivery in the worker; RabbitMQ: the broker never sends it
    assert received == (4 if broker.name == "redis" else 3)
    assert len(amqp_runs(journal, crash_key)) == 3
    assert sorted(r["task_id"] for r in dlq_records(capsys, broker.url)) == sorted([crash_id, permanent_id])
    assert worker.alive
