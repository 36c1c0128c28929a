"""The dead-letter store is down when a task is dead-lettered: the message must not be lost.

The broker stays up; the store is a separate private redis-server
(``dead_letter_store.url``) that a test stops before the failure and starts
again later.

Observed and decided behaviour (every case: one record once the store is back,
and the task ran once per failed write plus once more, the run that wrote it):
- ``ack.late``: the message is requeued (``Reject(requeue=True)``) instead of acked.
  Each requeue is preceded by a pause that doubles (0.5 s, 1 s, 2 s ... 10 s):
  without it the message looped about 200 times a second, re-running the task
  body each time.
- ``ack.late`` with ``max_redeliveries``: the redelivery counter lives in the same
  store; while it is down a redelivered message runs uncounted. It used to fail
  with ``redis.ConnectionError`` and be acked: lost without a record.
- early ack: the message was acked before it ran, so ``Reject(requeue=True)`` did
  nothing and the message was lost. It is now published again (same id, retry
  number and headers) with the same doubling countdown.
- hard time limit (handled in the worker's main process, after Celery has acked
  the message, whatever ``ack.late`` says): published again the same way; the
  record used to be dropped with only a log line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.harness import (
    DEADLETTER_POLICY,
    DL_STREAM,
    DLAPP,
    broker_is_drained,
    dl_runs,
    gaps,
    log_events,
    new_key,
    producer,
    records_for,
    wait_events,
    wait_final,
    wait_record,
)
from support.servers import REPO_ROOT, RedisServer, WorkerProcess, wait_for

from celery_policy.deadletter.store import Filter, RedisStreamStore
from celery_policy.transport.delayed import delayed_key

pytestmark = pytest.mark.worker

QUEUE = "dl-down"
TIMED = ("dl.slow", "dl.slow_late")  # hard limit 1 s; early ack and ack.late


def start_worker(
    tmp_path: Path,
    start: Callable[..., WorkerProcess],
    broker: RedisServer,
    store_server: RedisServer,
    *,
    tasks_yaml: str = "",
    pool: str = "solo",
) -> WorkerProcess:
    """A ``dlapp`` worker whose dead-letter store is ``store_server`` (an overlay file over deadletter.yaml)."""
    overlay = tmp_path / "store-down.yaml"
    overlay.write_text(f"version: 1\n{tasks_yaml}dead_letter_store:\n  url: {store_server.url}\n")
    return start(
        DLAPP,
        pool=pool,
        concurrency=2,
        queues=[QUEUE],
        broker_url=broker.url,
        cwd=REPO_ROOT,
        pythonpath=(REPO_ROOT,),
        env={
            "DL_BROKER_URL": broker.url,
            "CELERY_POLICY_FILE": os.pathsep.join([str(DEADLETTER_POLICY), str(overlay)]),
        },
    )


@pytest.mark.parametrize(
    ("ack", "counter_events"),
    [
        pytest.param("{late: true}", False, id="ack-late"),
        pytest.param("{late: true, reject_on_worker_lost: true, max_redeliveries: 3}", True, id="with-redelivery-cap"),
        pytest.param("{late: false}", False, id="early-ack"),
    ],
)
def test_a_dead_letter_written_while_the_store_is_down_runs_again_paced_and_is_written_once_it_is_back(
    ack: str,
    counter_events: bool,
    tmp_path: Path,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., WorkerProcess],
) -> None:
    broker, store_server = redis_server_factory(), redis_server_factory()
    tasks_yaml = f"tasks:\n  dl.permanent:\n    ack: {ack}\n"
    worker = start_worker(tmp_path, celery_worker_process, broker, store_server, tasks_yaml=tasks_yaml)
    client = broker.client()
    store = RedisStreamStore(store_server.url, DL_STREAM)
    app = producer(broker.url)
    store_server.stop()

    key = new_key("down")
    task_id = app.send_task("dl.permanent", args=(key,), kwargs={"amount": 3}, queue=QUEUE).id
    # Three failed writes, each announcing when the task runs again (0.5 s, 1 s, 2 s): the runs between
    # them must keep to that schedule (paced, not a hot loop), whatever the machine's load.
    wait_events(worker, "dead_letter_store_unavailable", 3, timeout=30, task_id=task_id)
    wait_for("the run after the third failed write", lambda: len(dl_runs(client, key)) >= 4, timeout=30)
    announced = [
        e["again_in_s"] for e in log_events(worker.log_text(), "dead_letter_store_unavailable", task_id=task_id)
    ]
    assert announced[:3] == [0.5, 1.0, 2.0]
    run_gaps = gaps(dl_runs(client, key))
    assert all(gap >= again - 0.05 for gap, again in zip(run_gaps, announced, strict=False)), (run_gaps, announced)

    # the message is still with the broker: in the queue, unacked while it is running or waiting for a short
    # countdown, or in the delayed set while it waits for a countdown of 1 s or more (delayed delivery)
    def held() -> bool:
        return client.llen(QUEUE) + client.hlen("unacked") + client.zcard(delayed_key(QUEUE)) == 1

    wait_for("the message in the queue, unacked or delayed", held, 3)
    unavailable = log_events(worker.log_text(), "dead_letter_store_unavailable", task_id=task_id)
    assert [e["again_in_s"] for e in unavailable][:3] == [0.5, 1.0, 2.0][: len(unavailable)]
    assert {e["reason"] for e in unavailable} == {"permanent"}
    counter = log_events(worker.log_text(), "redelivery_counter_unavailable", task_id=task_id)
    assert bool(counter) is counter_events

    store_server.start()
    record = wait_record(store, task_id, timeout=20)

    assert (record.reason, record.attempts, record.args, record.kwargs) == ("permanent", 1, [key], {"amount": 3})
    assert record.exc_message == "invalid amount 3"
    assert wait_final(client, task_id)["status"] == "FAILURE"
    wait_for("the message to be acked", lambda: broker_is_drained(client, QUEUE), 10)
    unavailable = log_events(worker.log_text(), "dead_letter_store_unavailable", task_id=task_id)
    executions = dl_runs(client, key)
    assert len(executions) == len(unavailable) + 1  # every failed write ran once more; the last one wrote
    assert all(e["id"] == task_id and e["retries"] == 0 for e in executions)
    assert len(records_for(store, task_id)) == 1
    assert store.count() == 1
    if counter_events:  # redeliveries during the outage were not counted against max_redeliveries
        assert int(store.client.get(f"celery-policy:dlv:{{{task_id}}}:0") or 0) == 1


def test_a_hard_time_limit_while_the_store_is_down_is_published_again_and_written_once_the_store_is_back(
    tmp_path: Path,
    redis_server_factory: Callable[..., RedisServer],
    celery_worker_process: Callable[..., WorkerProcess],
) -> None:
    broker, store_server = redis_server_factory(), redis_server_factory()
    worker = start_worker(tmp_path, celery_worker_process, broker, store_server, pool="prefork")
    client = broker.client()
    store = RedisStreamStore(store_server.url, DL_STREAM)
    app = producer(broker.url)
    store_server.stop()

    sent = {name: (key := new_key(name), app.send_task(name, args=(key, 30), queue=QUEUE).id) for name in TIMED}
    for _, task_id in sent.values():
        worker.wait_for_log(rf'"task_id": "{task_id}".*dead_letter_store_unavailable', timeout=20)

    store_server.start()

    for name, (key, task_id) in sent.items():
        record = wait_record(store, task_id, timeout=30)
        assert (record.task, record.reason, record.args) == (name, "time_limit", [key, 30])
        assert (record.queue, record.hostname) == (QUEUE, worker.hostname)
        executions = dl_runs(client, key)
        unavailable = log_events(worker.log_text(), "dead_letter_store_unavailable", task_id=task_id)
        assert len(executions) == len(unavailable) + 1  # published again after each failed write, killed each time
        assert all(e["id"] == task_id for e in executions)
        assert wait_final(client, task_id)["status"] == "FAILURE"
    assert log_events(worker.log_text(), "dead_letter_lost") == []
    wait_for("every message to be acked", lambda: broker_is_drained(client, QUEUE), 10)
    assert sorted(str(r.task_id) for r in store.iter(Filter())) == sorted(task_id for _, task_id in sent.values())
