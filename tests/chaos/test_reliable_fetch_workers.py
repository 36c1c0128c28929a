"""Reliable fetch in real ``celery worker`` processes (the chaos app), one claim at a time.

- the heartbeat thread keeps a solo worker alive while a task runs longer than the heartbeat TTL;
- a SIGKILLed worker's in-flight message is given back by a peer with the default liveness options,
  no sooner than the TTL allows and within the schedule those options give;
- a worker's reliable channel survives a real broker restart (SIGKILL, AOF) outside the chaos run;
- ``install()`` leaves an explicitly set ``broker_transport`` alone.

Executions are counted on a separate Redis (``runs:<key>`` when the body starts, ``fx:<key>`` when it ends).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from support.servers import RedisServer, WorkerProcess, wait_for

from celery_policy.transport import RELIABLE_TRANSPORT
from celery_policy.transport._liveness import CONSUMERS_KEY, OWNER_KEY
from celery_policy.transport.redis import Channel

pytestmark = pytest.mark.worker

APPS = Path(__file__).resolve().parents[1] / "support" / "apps" / "chaos"
POLICY = """
version: 1
defaults:
  ack: {{late: true, reject_on_worker_lost: true}}
worker: {{prefetch_multiplier: 1}}
dead_letter_store: {{url: "{evidence}", stream: "chaos:dead"}}
"""
# Scheduling and process start-up on a loaded 2-core machine, on top of every window derived below.
SLACK_S = 10.0


class Fleet:
    def __init__(self, tmp_path: Path, broker: RedisServer, evidence: RedisServer) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.evidence = evidence
        self.policy = tmp_path / "policy.yaml"
        self.policy.write_text(POLICY.format(evidence=evidence.url))
        self.workers: list[WorkerProcess] = []
        self.producer = Celery("rf-producer", broker=broker.url)

    def worker(self, *, options: dict[str, Any] | None = None, transport: str | None = None) -> WorkerProcess:
        env = {
            "CELERY_BROKER_URL": self.broker.url,
            "CHAOS_EVIDENCE_URL": self.evidence.url,
            "CELERY_POLICY_FILE": str(self.policy),
            "CHAOS_TRANSPORT_OPTIONS": json.dumps(options or {}),
        }
        if transport is not None:
            env["CHAOS_BROKER_TRANSPORT"] = transport
        worker = WorkerProcess(
            "chaosapp",
            log_path=self.tmp_path / f"worker-{len(self.workers) + 1}.log",
            pool="solo",
            hostname=f"rf{len(self.workers) + 1}@localhost",
            cwd=APPS,
            env=env,
            ready_timeout=90,
        )
        self.workers.append(worker)
        return worker.start()

    def send_ok(self, key: int, work_s: float) -> None:
        self.producer.send_task("chaos.ok", args=[key, work_s], task_id=f"rf-{key}")

    def count(self, name: str, key: int) -> int:
        return int(self.evidence.client().get(f"{name}:{key}") or 0)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.producer.close()


@pytest.fixture
def fleet(redis_server_factory: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    made = Fleet(tmp_path, redis_server_factory(appendonly=True), redis_server_factory())
    yield made
    made.close()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for worker in made.workers:
            print(f"--- {worker!r} ---\n{worker.log_text()[-8000:]}")


def _drained(client: Any) -> bool:
    return bool(client.llen("celery") == 0 and client.hlen("unacked") == 0 and client.hlen(OWNER_KEY) == 0)


def test_a_solo_task_running_past_the_heartbeat_ttl_is_not_taken_by_a_peer(fleet: Fleet) -> None:
    """The solo pool blocks the consumer for the whole task: only the heartbeat thread keeps the worker alive."""
    fast = {"reliable_heartbeat_interval": 0.3, "reliable_heartbeat_ttl": 1.0, "reliable_recover_interval": 0.3}
    busy = fleet.worker(options=fast)
    fleet.send_ok(1, work_s=6.0)  # six TTLs: without the thread, the key expires and the peer reruns it
    wait_for("the long task to start", lambda: fleet.count("runs", 1) == 1, timeout=30)
    peer = fleet.worker(options=fast)
    wait_for("the long task to finish", lambda: fleet.count("fx", 1) == 1, timeout=30)
    wait_for("the broker to be drained", lambda: _drained(fleet.broker.client()), timeout=10)
    # Drained: no copy left anywhere that could still run, so one start means it ran once.
    assert fleet.count("runs", 1) == 1
    assert "restored" not in peer.log_text()
    assert busy.alive
    assert peer.alive


def test_a_killed_workers_in_flight_message_is_given_back_by_a_peer_with_the_default_timeouts(fleet: Fleet) -> None:
    interval, ttl, recover = (
        Channel.reliable_heartbeat_interval,
        Channel.reliable_heartbeat_ttl,
        Channel.reliable_recover_interval,
    )
    victim = fleet.worker()
    fleet.send_ok(2, work_s=120.0)  # still running when it is killed
    wait_for("the task to start on the victim", lambda: fleet.count("runs", 2) == 1, timeout=30)
    peer = fleet.worker()
    fleet.send_ok(3, work_s=0.0)  # the peer consumes: it is up and sweeping
    wait_for("the peer to run a task", lambda: fleet.count("fx", 3) == 1, timeout=30)
    victim.kill()
    killed_at = time.monotonic()
    # The victim's key outlives it by at most the TTL (last beat at most one interval before the kill);
    # a peer then waits a further TTL after its first sweep that finds the key gone, sweeping every
    # ``recover`` seconds: so between 2*ttl - interval and 2*ttl + 2*recover after the kill.
    earliest = 2 * ttl - interval
    latest = 2 * ttl + 2 * recover
    wait_for("the peer to run the message again", lambda: fleet.count("runs", 2) == 2, timeout=latest + SLACK_S)
    waited = time.monotonic() - killed_at
    assert waited >= earliest - 0.5, (waited, earliest)
    peer.wait_for_log(r"reliable fetch: restored 1 message\(s\) of dead consumer", timeout=5)
    assert peer.alive


def test_a_reliable_channel_survives_a_broker_restart_and_keeps_every_message(fleet: Fleet) -> None:
    fast = {"reliable_heartbeat_interval": 0.5, "reliable_heartbeat_ttl": 2.0, "reliable_recover_interval": 0.5}
    worker = fleet.worker(options=fast)
    fleet.send_ok(4, work_s=3.0)
    wait_for("the task to start", lambda: fleet.count("runs", 4) == 1, timeout=30)
    # SIGKILL while the task runs (the AOF keeps the message in ``unacked``), and stay down until the
    # worker has noticed: it closes its channel while Redis does not answer, the case kombu gets wrong.
    fleet.broker.kill()
    worker.wait_for_log(r"Connection to broker lost|Cannot connect to", timeout=30)
    fleet.broker.start()
    worker.wait_for_log(r"Connected to ", count=2, timeout=60)  # the consumer reconnected
    fleet.send_ok(5, work_s=0.0)
    wait_for("a task sent after the restart", lambda: fleet.count("fx", 5) == 1, timeout=60)
    wait_for("the interrupted task to complete", lambda: fleet.count("fx", 4) >= 1, timeout=60)
    wait_for("the broker to be drained", lambda: _drained(fleet.broker.client()), timeout=ttl_grace(fast))
    assert worker.alive, worker.returncode
    assert "Unrecoverable error" not in worker.log_text()


def ttl_grace(options: dict[str, float]) -> float:
    """How long a message a closed channel held may stay in ``unacked``: the TTL, one beat, plus slack."""
    return options["reliable_heartbeat_ttl"] + options["reliable_heartbeat_interval"] + SLACK_S


def test_install_leaves_an_explicit_broker_transport_alone(fleet: Fleet) -> None:
    explicit = "kombu.transport.redis:Transport"
    worker = fleet.worker(transport=explicit)
    fleet.send_ok(6, work_s=0.0)
    wait_for("the task to run", lambda: fleet.count("fx", 6) == 1, timeout=30)
    client = fleet.broker.client()
    # kombu's own fetch: no consumer registered for liveness, no owner record ever written.
    assert client.scard(CONSUMERS_KEY) == 0
    assert client.exists(OWNER_KEY) == 0
    assert "left as it is" in worker.log_text()
    # The same app without the explicit setting takes with reliable fetch (the control).
    fleet.worker()
    assert RELIABLE_TRANSPORT.endswith(":Transport")
    wait_for("the reliable worker to register", lambda: client.scard(CONSUMERS_KEY) == 1, timeout=30)
