"""Leases: a live consumer's messages are never restored by the visibility timeout (real workers, real Redis).

Two workers share the queue, the visibility timeout is 5 s. Plain Celery/kombu and
celery-policy run side by side, each on its own redis-server, with the same tasks:
plain kombu runs the long task and the long countdown several times, celery-policy once
(and the retry exactly once, at its due time).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.harness import gaps, make_worker, producer
from support.servers import RedisServer, WorkerProcess, wait_for

pytestmark = pytest.mark.worker

LEASEAPP = "tests.support.apps.lease.leaseapp"
VISIBILITY_S = 5.0
# kombu sweeps for expired messages every unacked_restore_interval x unacked_restore_throttle seconds (100 s by
# default); 1 s here so that plain kombu's duplicates show within the test. Fast liveness for celery-policy.
TRANSPORT_OPTIONS = {
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
    "reliable_heartbeat_interval": 0.5,
    "reliable_heartbeat_ttl": 3.0,
    "reliable_recover_interval": 1.0,
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
worker: {{prefetch_multiplier: 1, visibility_timeout: {visibility}s{extra}}}
"""


def lease_policy(tmp_path: Path, countdown_s: float, extra: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "lease.yaml"
    path.write_text(POLICY.format(countdown=countdown_s, visibility=VISIBILITY_S, extra=extra))
    return path


def lease_workers(
    tmp_path: Path, server: RedisServer, mode: str, policy: Path | None, count: int = 2, **options: Any
) -> list[WorkerProcess]:
    env = {
        "LEASE_BROKER_URL": server.url,
        "LEASE_MODE": mode,
        "LEASE_VISIBILITY_S": str(VISIBILITY_S),
        "LEASE_TRANSPORT_OPTIONS": json.dumps(TRANSPORT_OPTIONS),
    }
    workers = [
        make_worker(tmp_path, app=LEASEAPP, broker_url=server.url, policy=policy, env=env, name=f"{mode}{i}", **options)
        for i in range(count)
    ]
    return [worker.start() for worker in workers]


def runs(server: RedisServer, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in server.client().lrange(f"lease:journal:{key}", 0, -1)]


def test_a_long_task_and_a_long_countdown_run_once_under_leases_and_several_times_on_plain_kombu(
    redis_server_factory: Any, tmp_path: Path
) -> None:
    task_s, countdown_s = 20.0, 25.0
    # plain Celery/kombu; celery-policy with leases only (the retry waits in the worker); with delayed delivery
    plain_server, leased_server, delayed_server = (redis_server_factory() for _ in range(3))
    workers = lease_workers(tmp_path / "plain", plain_server, "plain", None)
    leased = lease_policy(tmp_path / "leased", countdown_s, extra=", delayed_delivery: false")
    workers += lease_workers(tmp_path / "leased", leased_server, "policy", leased)
    workers += lease_workers(tmp_path / "delayed", delayed_server, "policy", lease_policy(tmp_path, countdown_s))
    servers = (plain_server, leased_server, delayed_server)
    try:
        sent = time.time()
        for server in servers:
            app = producer(server.url)
            app.send_task("lease.long", args=["long", task_s])
            app.send_task("lease.retry", args=["retry", countdown_s])
        client = delayed_server.client()
        waiting = wait_for("the retry in the delayed set", lambda: client.zcard("celery-policy:delayed:celery"), 10)
        assert client.hlen("unacked") == 1  # only the long task: the failed attempt was acked with the retry
        # Long enough for every copy kombu restores (each visibility timeout of each copy) to have started,
        # and for the retry to run once after its countdown.
        for server in servers[1:]:
            wait_for("the policy's retry", lambda s=server: len(runs(s, "retry")) >= 2, countdown_s + 20)
        time.sleep(max(0.0, sent + countdown_s + 2 * VISIBILITY_S + 3 - time.time()))
        journals = {server.url: (runs(server, "long"), runs(server, "retry")) for server in servers}
    finally:
        for worker in workers:
            worker.kill()
    assert waiting == 1
    for name, server in zip(("plain kombu", "leases", "leases + delayed delivery"), servers, strict=True):
        print(f"runs with visibility timeout {VISIBILITY_S:g}s: {name}: {task_s:g}s task "  # the README's figures
              f"{len(journals[server.url][0])}, {countdown_s:g}s countdown {len(journals[server.url][1])}")  # fmt: skip
    plain_long, plain_retry = journals[plain_server.url]
    assert len(plain_long) >= 2, plain_long  # plain kombu restored the running task's message: a duplicate
    assert len(plain_retry) >= 3, plain_retry  # ... and the parked countdown retry
    for server in servers[1:]:
        policy_long, policy_retry = journals[server.url]
        assert len(policy_long) == 1, policy_long
        assert [entry["retries"] for entry in policy_retry] == [0, 1], policy_retry
        assert gaps(policy_retry)[0] >= countdown_s, policy_retry
        assert not any(entry["redelivered"] for entry in policy_long + policy_retry)
    assert client.zcard("celery-policy:delayed:celery") == 0


def test_a_dead_workers_in_flight_message_is_run_by_a_live_peer_within_30_s(
    redis_server_factory: Any, tmp_path: Path
) -> None:
    """celery-policy's peer recovery beside plain kombu's only restore, the visibility timeout (5 s here).

    Plain kombu gets a dead worker's message back only once it is older than the visibility timeout,
    the same bound that runs a longer task twice (test above); celery-policy gets it back within the
    heartbeat TTL whatever the visibility timeout.
    """
    servers = {"policy": redis_server_factory(), "plain": redis_server_factory()}
    policy = lease_policy(tmp_path, 1.0)
    pairs = {
        "policy": lease_workers(tmp_path / "policy", servers["policy"], "policy", policy),
        "plain": lease_workers(tmp_path / "plain", servers["plain"], "plain", None),
    }
    first_runs: dict[str, dict[str, Any]] = {}
    killed: dict[str, float] = {}
    peers: dict[str, WorkerProcess] = {}
    try:
        for server in servers.values():
            producer(server.url).send_task("lease.long", args=["crash", 15.0])
        for mode, server in servers.items():
            first_runs[mode] = wait_for("the first run", lambda s=server: runs(s, "crash"), 20)[0]
            first, second = pairs[mode]
            victim = first if first_runs[mode]["pid"] == first.pid else second
            peers[mode] = second if victim is first else first
            victim.kill()
            killed[mode] = time.time()
        again = {
            mode: wait_for("a second run", lambda s=server: runs(s, "crash")[1:], 30)[0]
            for mode, server in servers.items()
        }
    finally:
        for workers in pairs.values():
            for worker in workers:
                worker.kill()
    for mode in servers:
        print(  # the README's figures
            f"a dead worker's in-flight message ran on its peer {again[mode]['t'] - killed[mode]:.1f}s after the "
            f"SIGKILL ({mode}; {again[mode]['t'] - first_runs[mode]['t']:.1f}s after it was first taken,"
            f" visibility timeout {VISIBILITY_S:g}s)"
        )
        assert again[mode]["pid"] == peers[mode].pid
        assert again[mode]["redelivered"] is True
    assert again["policy"]["t"] - killed["policy"] < 30, again
    # plain kombu: not before the message is older than the visibility timeout (its only restore)
    assert again["plain"]["t"] - first_runs["plain"]["t"] >= VISIBILITY_S, again
