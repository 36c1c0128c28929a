# kombu's Connection/Queue/Producer are unannotated:
# mypy: disable-error-code="no-untyped-call"
"""Delayed delivery on Redis (celery_policy.transport.delayed) against real redis-servers and real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Queue
from support.harness import make_worker, producer
from support.servers import RedisServer, WorkerProcess, wait_for

from celery_policy.transport import RELIABLE_TRANSPORT, delayed
from celery_policy.transport._liveness import OWNER_KEY, liveness_for

pytestmark = pytest.mark.worker

LEASEAPP = "tests.support.apps.lease.leaseapp"
FAST = {
    "reliable_heartbeat_interval": 0.5,
    "reliable_heartbeat_ttl": 3.0,
    "reliable_recover_interval": 1.0,
    "delayed_poll_interval": 0.5,
}
POLICY = """
version: 1
errors: {{transient: [tests.support.apps.lease.leaseapp.Transient]}}
defaults:
  retry:
    on: [transient]
    max_retries: 3
    backoff: {{initial: {countdown}s, factor: 1, max: {countdown}s, jitter: none}}
  ack: {{late: true}}
worker: {{prefetch_multiplier: 1}}
"""


def _workers(tmp_path: Path, server: RedisServer, countdown_s: float, count: int = 2) -> list[WorkerProcess]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    policy = tmp_path / "delayed.yaml"
    policy.write_text(POLICY.format(countdown=countdown_s))
    env = {"LEASE_BROKER_URL": server.url, "LEASE_MODE": "policy", "LEASE_TRANSPORT_OPTIONS": json.dumps(FAST)}
    return [
        make_worker(tmp_path, app=LEASEAPP, broker_url=server.url, policy=policy, env=env, name=f"w{i}").start()
        for i in range(count)
    ]


def _runs(server: RedisServer, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in server.client().lrange(f"lease:journal:{key}", 0, -1)]


def _send_retries(server: RedisServer, count: int, countdown_s: float) -> None:
    """``count`` tasks that fail once and retry after ``countdown_s`` (keys k0, k1, ...)."""
    app = producer(server.url)
    with app.producer_or_acquire() as publisher:
        for i in range(count):
            app.send_task("lease.retry", args=[f"k{i}", countdown_s], producer=publisher)


def _kill_all_and_restart(workers: list[WorkerProcess], server: RedisServer) -> None:
    """SIGKILL every worker, then the broker, and start it again 1 s later (its AOF keeps what it acknowledged)."""
    for worker in workers:
        worker.kill()
    server.kill()
    time.sleep(1.0)
    server.start()


def _delayed_publish(url: str, queue: str, body: Any, countdown_s: float, priority: int | None = None) -> None:
    eta = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + countdown_s)) + "+00:00"
    options = {"delayed_delivery": True}
    with Connection(url, transport=RELIABLE_TRANSPORT, transport_options=options) as conn, conn.Producer() as p:
        p.publish(body, routing_key=queue, declare=[Queue(queue)], headers={"eta": eta, "id": "x"}, priority=priority)


def test_a_message_due_later_waits_in_the_set_and_moves_once_to_its_priority_list_even_with_racing_movers(
    redis_server_factory: Any,
) -> None:
    server = redis_server_factory()
    client = server.client()
    _delayed_publish(server.url, "dq", {"n": 1}, 2.0, priority=5)
    assert client.llen("dq") == 0
    assert delayed.counts(client) == {"dq": 1}
    [entry] = delayed.entries(client)
    assert entry.list_key == "dq\x06\x163"  # kombu's priority list for 5, chosen when it was published
    params = {"host": server.host, "port": server.port, "db": 0}
    movers = [
        liveness_for(params, unacked_key="unacked", unacked_index_key="unacked_index", interval_s=1, ttl_s=3,
                     recover_interval_s=1)
    ]  # fmt: skip
    movers.append(type(movers[0])(params, unacked_key="unacked", unacked_index_key="unacked_index", interval_s=1,
                                  ttl_s=3, recover_interval_s=1))  # fmt: skip
    assert movers[0].move_due() == 0  # not due yet
    assert client.llen("dq\x06\x163") == 0
    moved: list[int] = []
    start = threading.Barrier(2)

    def race(liveness: Any) -> None:
        start.wait()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            moved.append(liveness.move_due())
            time.sleep(0.01)

    threads = [threading.Thread(target=race, args=(m,)) for m in movers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(moved) == 1
    assert client.llen("dq\x06\x163") == 1
    payload = json.loads(client.lindex("dq\x06\x163", 0))
    assert payload["headers"]["id"] == "x"
    assert delayed.counts(client) == {}
    assert client.scard(delayed.QUEUES_KEY) == 0


def test_a_retry_is_stored_with_the_ack_of_its_failed_attempt_in_one_step(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    client = server.client()
    with Connection(server.url) as conn, conn.Producer() as p:
        p.publish({"n": 1}, routing_key="rq", declare=[Queue("rq")])
    options = {"delayed_delivery": True}
    with Connection(server.url, transport=RELIABLE_TRANSPORT, transport_options=options) as conn:
        channel: Any = conn.default_channel
        channel.basic_consume("rq", False, lambda message: None, "c")
        taken = channel.basic_get("rq", no_ack=False)
        tag = taken.delivery_tag
        assert client.hexists("unacked", tag)
        assert client.hexists(OWNER_KEY, tag)
        eta = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 60)) + "+00:00"
        with delayed.acking(tag):
            conn.Producer().publish({"n": 1, "retry": 1}, routing_key="rq", headers={"eta": eta, "id": "r"})
            assert delayed.was_stored()
        assert not client.hexists("unacked", tag)
        assert client.zscore("unacked_index", tag) is None
        assert not client.hexists(OWNER_KEY, tag)
        assert not client.sismember(f"celery-policy:rf:inflight:{channel.liveness.consumer_id}", tag)
        assert delayed.counts(client) == {"rq": 1}
        taken.ack()  # Celery's ack afterwards finds nothing left
        # a message due within delayed_min_delay (1 s) goes straight to its list
        conn.Producer().publish({"n": 2}, routing_key="rq", headers={"eta": time.strftime("%Y-%m-%dT%H:%M:%S",
                                time.gmtime(time.time())) + "+00:00", "id": "now"})  # fmt: skip
    assert client.llen("rq") == 1
    assert delayed.counts(client) == {"rq": 1}


def test_a_policy_retry_and_a_snooze_wait_in_the_broker_and_run_on_time(
    redis_server_factory: Any, tmp_path: Path
) -> None:
    server = redis_server_factory()
    workers = _workers(tmp_path, server, 3.0, count=1)
    client = server.client()
    try:
        app = producer(server.url)
        app.send_task("lease.snooze", args=["snooze", 3.0])
        app.send_task("lease.retry", args=["retry", 3.0])
        wait_for("both waiting", lambda: delayed.counts(client).get("celery") == 2, 10)
        snoozed = wait_for("the snooze's second run", lambda: _runs(server, "snooze")[1:], 15)
        retried = wait_for("the retry", lambda: _runs(server, "retry")[1:], 15)
    finally:
        for worker in workers:
            worker.kill()
    first_snooze, first_retry = _runs(server, "snooze")[0], _runs(server, "retry")[0]
    assert client.lrange("lease:snoozed:snooze", 0, -1) == [b"durable"]
    assert [first_snooze["retries"], snoozed[0]["retries"]] == [0, 0]  # no retry spent
    assert [first_retry["retries"], retried[0]["retries"]] == [0, 1]
    for first, second in ((first_snooze, snoozed[0]), (first_retry, retried[0])):
        assert 3.0 <= second["t"] - first["t"] < 3.0 + 5, (first, second)
    assert client.hlen("unacked") == 0


def test_retries_delayed_through_a_worker_sigkill_and_a_broker_restart_run_once_each_on_time(
    redis_server_factory: Any, tmp_path: Path
) -> None:
    """200 retries waiting 20 s; every worker is SIGKILLed and the broker restarted (1 s down, AOF) meanwhile."""
    count, countdown_s = 200, 20.0
    server = redis_server_factory(appendonly=True)
    workers = _workers(tmp_path / "before", server, countdown_s)
    client = server.client()
    try:
        _send_retries(server, count, countdown_s)
        wait_for("200 retries delayed", lambda: delayed.counts(client).get("celery") == count, 30)
        assert client.hlen("unacked") == 0  # every failed attempt acked with its retry
        _kill_all_and_restart(workers, server)
        client = server.client()
        assert delayed.counts(client) == {"celery": count}  # the AOF kept the set
        workers = _workers(tmp_path / "after", server, countdown_s, count=1)
        ready_at = time.time()  # a retry cannot run before a worker is back to move it and run it
        workers += _workers(tmp_path / "after2", server, countdown_s, count=1)
        wait_for("every retry run", lambda: all(len(_runs(server, f"k{i}")) >= 2 for i in range(count)), 60)
        time.sleep(3)  # a duplicate would show now
    finally:
        for worker in workers:
            worker.kill()
    late, waits, dues = [], [], []
    for i in range(count):
        entries = _runs(server, f"k{i}")
        assert [e["retries"] for e in entries] == [0, 1], (i, entries)
        waited = entries[1]["t"] - entries[0]["t"]
        assert waited >= countdown_s, (i, entries)
        due = entries[0]["t"] + countdown_s
        dues.append(due)
        lateness = entries[1]["t"] - max(due, ready_at)
        waits.append(lateness)
        if lateness > 5:
            late.append((i, lateness))
    print(
        f"{count} retries after a SIGKILL and a broker restart: {min(waits):.2f}-{max(waits):.2f}s after their due "
        f"time (a new worker was ready {min(dues) - ready_at:.1f}s before the first was due)"
    )
    assert late == []
    assert delayed.counts(client) == {}
    assert client.hlen("unacked") == 0


def test_plain_celery_strands_the_same_countdown_retries_in_unacked_through_the_same_faults(
    redis_server_factory: Any, tmp_path: Path
) -> None:
    """The baseline of the test above: plain Celery/kombu, the same 200 retries, SIGKILL and broker restart.

    Each countdown retry waits in the worker as an unacked ETA message. After the SIGKILL and the restart the
    new workers do not get them back: they wait in ``unacked`` for kombu's visibility timeout (1 h by default).
    """
    count, countdown_s, after_s = 200, 20.0, 20.0
    server = redis_server_factory(appendonly=True)
    env = {"LEASE_BROKER_URL": server.url, "LEASE_MODE": "plain", "LEASE_VISIBILITY_S": "3600"}

    def plain_workers(path: Path, n: int) -> list[WorkerProcess]:
        return [
            make_worker(path, app=LEASEAPP, broker_url=server.url, policy=None, env=env, name=f"plain{i}").start()
            for i in range(n)
        ]

    workers = plain_workers(tmp_path / "before", 2)
    client = server.client()
    try:
        _send_retries(server, count, countdown_s)
        wait_for("200 retries held by the workers", lambda: client.hlen("unacked") == count, 30)
        sent_at = max(_runs(server, f"k{i}")[0]["t"] for i in range(count))
        _kill_all_and_restart(workers, server)
        client = server.client()
        workers = plain_workers(tmp_path / "after", 2)
        time.sleep(max(0.0, sent_at + countdown_s + after_s - time.time()))
        ran = sum(len(_runs(server, f"k{i}")) >= 2 for i in range(count))
        stranded = client.hlen("unacked")
    finally:
        for worker in workers:
            worker.kill()
    print(  # the README's baseline figure
        f"plain Celery/kombu: {ran} of {count} retries had run {after_s:g}s after their due time; {stranded} were "
        "still in unacked, waiting for the visibility timeout (1 h)"
    )
    assert ran == 0
    assert stranded == count


def test_due_messages_of_a_plain_celery_queue_wait_until_a_celery_policy_worker_with_delayed_delivery_runs(
    redis_server_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a celery-policy worker with delayed delivery moves due entries, those of every queue of its Redis db:
    one consuming another queue is enough; producers, plain workers and delayed_delivery: false move nothing."""
    from celery import Celery

    from celery_policy.cli import main

    server = redis_server_factory()
    client = server.client()
    plain_env = {"LEASE_BROKER_URL": server.url, "LEASE_MODE": "plain", "LEASE_VISIBILITY_S": "3600"}
    plain = make_worker(tmp_path / "plain", app=LEASEAPP, broker_url=server.url, policy=None, env=plain_env,
                        name="plain").start()  # fmt: skip
    workers = [plain]
    try:
        # a producer that loads the policy (its transport, delayed delivery on): the countdown goes to the delayed set
        sender = Celery("sender", broker=server.url, set_as_current=False)
        sender.conf.update(broker_transport=RELIABLE_TRANSPORT, broker_transport_options={"delayed_delivery": True})
        due = time.time() + 1.5
        sender.send_task("lease.long", args=["plainq", 0], countdown=1.5)
        assert delayed.counts(client) == {"celery": 1}
        wait_for("long past due", lambda: time.time() > due + delayed.STUCK_AFTER_S + 0.5, 15)
        assert delayed.counts(client) == {"celery": 1}  # the plain worker does not move it
        assert _runs(server, "plainq") == []
        assert main(["delayed", "stats", "--url", server.url]) == 0
        out = capsys.readouterr().out
        warning = f"warning: more than {delayed.STUCK_AFTER_S:.0f} s past due and not moved: celery 1"
        assert f"{warning}\n" in out
        status = subprocess.run(
            [str(Path(sys.executable).with_name("celery-policy")), "status", "--app", LEASEAPP, "--timeout", "2"],
            env={**os.environ, **plain_env}, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        lines = status.stdout.splitlines()
        at = lines.index("delayed messages (waiting in the broker): celery 1")
        assert lines[at + 1] == warning
        assert lines[at + 2].startswith("  help: only a running celery-policy worker with delayed delivery moves")

        policy_off = tmp_path / "off.yaml"
        worker_on = "worker: {prefetch_multiplier: 1}"
        policy_off.write_text(
            POLICY.format(countdown=5).replace(worker_on, worker_on[:-1] + ", delayed_delivery: false}")
        )
        policy_on = tmp_path / "on.yaml"
        policy_on.write_text(POLICY.format(countdown=5))
        env = {"LEASE_BROKER_URL": server.url, "LEASE_MODE": "policy", "LEASE_TRANSPORT_OPTIONS": json.dumps(FAST)}
        off = make_worker(tmp_path / "off", app=LEASEAPP, broker_url=server.url, policy=policy_off, env=env,
                          queues=["other"], name="off").start()  # fmt: skip
        workers.append(off)
        off.wait_for_log(r"delayed delivery is off in this worker, and 1 delayed message\(s\) wait")
        time.sleep(2 * FAST["delayed_poll_interval"])
        assert delayed.counts(client) == {"celery": 1}
        started = time.time()
        on = make_worker(tmp_path / "on", app=LEASEAPP, broker_url=server.url, policy=policy_on, env=env,
                         queues=["other"], name="on").start()  # fmt: skip
        workers.append(on)
        on.wait_for_log(r"delayed delivery: this process moves the due delayed messages of every queue of Redis db 0")
        [run] = wait_for("the plain worker ran it", lambda: _runs(server, "plainq"), 10)
        assert run["t"] >= started  # moved by the worker that consumes `other`, run by the only one consuming `celery`
        assert plain.alive
        assert delayed.counts(client) == {}
    finally:
        for worker in workers:
            worker.kill()
