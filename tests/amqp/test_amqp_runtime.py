"""Queue arguments from the policy, the boot check against existing queues, and a replay round trip on RabbitMQ."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from support.harness import BROKERAPP, amqp_runs, amqp_worker_env, needs_quorum_queues, new_key
from support.servers import REPO_ROOT, ProcessStartError, RedisServer, WorkerProcess, wait_for

from celery_policy.cli import main
from celery_policy.errors import PolicyError
from celery_policy.queues import declare_queues, plan_queues
from celery_policy.resolve import Policy, load
from celery_policy.runtime.amqp import configure_queues
from celery_policy.support import celery_consumes_quorum_queues

if TYPE_CHECKING:
    from support.rabbit import RabbitVhost

pytest_plugins = ["support.rabbit"]  # rabbit_broker, rabbit_vhost, fresh_vhost

WorkerFactory = Callable[..., WorkerProcess]  # tests/conftest.py celery_worker_process


def policy_from(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load([path], check_imports=False)


QUORUM_POLICY = """
version: 1
defaults:
  route: {queue_type: quorum}
  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 4}
tasks:
  "reports.*":
    route: {queue: reports, queue_type: classic, priority: 5}
  reports.urgent:
    route: {priority: 9}
  orders.charge:
    ack: {max_redeliveries: 2}
"""


def test_plan_maps_queue_type_max_redeliveries_and_priority_to_queue_arguments(tmp_path: Path) -> None:
    plans = plan_queues(policy_from(tmp_path, QUORUM_POLICY), amqp_store=True)

    assert plans["celery"].arguments() == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 2,  # the smallest max_redeliveries of the tasks sharing the queue
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "celery.dead",
    }
    assert plans["celery"].sources["x-delivery-limit"] == "tasks.orders.charge"
    assert plans["reports"].arguments() == {
        "x-queue-type": "classic",
        "x-max-priority": 9,
    }  # classic: no delivery limit
    assert plans["reports"].dead_queue == "reports.dead"
    # with a Redis store the Redis counter caps redeliveries: no broker limit, no dead-letter routing
    assert plan_queues(policy_from(tmp_path, QUORUM_POLICY), amqp_store=False)["celery"].arguments() == {
        "x-queue-type": "quorum"
    }


def test_tasks_sharing_a_queue_with_different_queue_types_are_a_policy_error(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        "version: 1\ntasks:\n"
        "  a.x: {route: {queue: q, queue_type: quorum}}\n"
        "  a.y: {route: {queue: q, queue_type: classic}}\n",
    )
    with pytest.raises(
        PolicyError, match=r"queue 'q' ask for different route.queue_type: quorum \(tasks.a.x\), classic \(tasks.a.y\)"
    ):
        plan_queues(policy)


def test_configure_queues_sets_the_default_queue_merges_declared_ones_and_refuses_a_conflict(tmp_path: Path) -> None:
    plans = plan_queues(policy_from(tmp_path, QUORUM_POLICY), amqp_store=True)
    app = Celery("plain", broker="amqp://guest:guest@127.0.0.1:5672//")
    configure_queues(app, plans)
    (default,) = app.conf.task_queues
    assert (default.name, default.exchange.name, default.routing_key) == ("celery", "celery", "celery")
    assert default.queue_arguments["x-delivery-limit"] == 2
    assert app.amqp.queues["reports"].queue_arguments == {"x-queue-type": "classic", "x-max-priority": 9}
    assert app.amqp.queues["other"].queue_arguments is None  # queues the policy does not name stay Celery's

    declared = Celery("declared", broker="amqp://")
    declared.conf.task_queues = [
        Queue("reports", Exchange("reports"), "reports", queue_arguments={"x-max-priority": 9})  # type: ignore[no-untyped-call]
    ]
    configure_queues(declared, plans)
    assert declared.conf.task_queues[0].queue_arguments == {"x-max-priority": 9, "x-queue-type": "classic"}

    conflicting = Celery("conflicting", broker="amqp://")
    conflicting.conf.task_queues = [Queue("reports", queue_arguments={"x-max-priority": 3})]  # type: ignore[no-untyped-call]
    with pytest.raises(
        PolicyError, match=r"queue 'reports': the app declares x-max-priority=3 in task_queues but the policy needs 9"
    ):
        configure_queues(conflicting, plans)


def test_declare_queues_names_the_conflicting_argument_of_an_existing_queue(
    tmp_path: Path, fresh_vhost: RabbitVhost
) -> None:
    with Connection(fresh_vhost.url) as connection:  # type: ignore[no-untyped-call]
        connection.default_channel.queue_declare("celery", durable=True, auto_delete=False)  # classic, no arguments
    plans = plan_queues(policy_from(tmp_path, QUORUM_POLICY), amqp_store=True)

    assert declare_queues(fresh_vhost.url, [plans["reports"]], create=False) == []  # missing: not created
    with pytest.raises(PolicyError) as caught:
        declare_queues(fresh_vhost.url, [plans["celery"]], where="policy.yaml")
    message = str(caught.value)
    assert "queue 'celery' already exists on the broker with other arguments than the policy needs" in message
    assert "inequivalent arg" in message
    assert "PRECONDITION_FAILED" in message
    assert "x-delivery-limit from tasks.orders.charge" in message
    assert "rabbitmqctl delete_queue celery" in message
    assert declare_queues(fresh_vhost.url, [plans["reports"]]) == ["reports", "reports.dead"]


@pytest.mark.worker
@needs_quorum_queues
def test_a_worker_stops_at_boot_with_a_policy_error_when_its_queue_exists_with_other_arguments(
    fresh_vhost: RabbitVhost, clean_redis: RedisServer, celery_worker_process: WorkerFactory
) -> None:
    with Connection(fresh_vhost.url) as connection:  # type: ignore[no-untyped-call]
        connection.default_channel.queue_declare("celery", durable=True, auto_delete=False)  # what users have today
    worker = celery_worker_process(
        BROKERAPP,
        env=amqp_worker_env(fresh_vhost.url, clean_redis.url),
        cwd=REPO_ROOT,
        pythonpath=(REPO_ROOT,),
        start=False,
    )

    with pytest.raises(ProcessStartError) as caught:
        worker.start()

    assert "exited with code 1 before it was ready" in str(caught.value)
    log = worker.log_text()
    assert "PolicyError: queue 'celery' already exists on the broker with other arguments" in log
    assert "tests/support/apps/amqp/policy.yaml" in log


@pytest.mark.worker
def test_a_quorum_queue_policy_boots_only_on_a_celery_that_can_consume_quorum_queues(
    fresh_vhost: RabbitVhost, clean_redis: RedisServer, celery_worker_process: WorkerFactory
) -> None:
    """Celery < 5.5 sets a global QoS that quorum queues refuse at the first consume: refuse at boot instead."""
    worker = celery_worker_process(
        BROKERAPP,
        env=amqp_worker_env(fresh_vhost.url, clean_redis.url),
        cwd=REPO_ROOT,
        pythonpath=(REPO_ROOT,),
        start=False,
    )
    if celery_consumes_quorum_queues():
        worker.start()
        assert worker.alive
        return
    with pytest.raises(ProcessStartError) as caught:
        worker.start()
    assert "exited with code 2 before it was ready" in str(caught.value)  # install() refused: the app did not load
    log = worker.log_text()
    assert "PolicyError: " in log
    assert "route.queue_type: quorum (queue 'celery') needs Celery 5.5 or newer" in log
    assert "tests/support/apps/amqp/policy.yaml:" in log


@pytest.mark.worker
@needs_quorum_queues
def test_replay_round_trip_on_rabbitmq_runs_the_task_again_and_empties_the_dead_queue(
    fresh_vhost: RabbitVhost,
    clean_redis: RedisServer,
    celery_worker_process: WorkerFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    policy = str(REPO_ROOT / "tests" / "support" / "apps" / "amqp" / "policy.yaml")
    journal = clean_redis.client()
    worker = celery_worker_process(
        BROKERAPP, env=amqp_worker_env(fresh_vhost.url, clean_redis.url), cwd=REPO_ROOT, pythonpath=(REPO_ROOT,)
    )
    key = new_key("once")
    task_id = Celery("producer", broker=fresh_vhost.url).send_task("cp.once", args=[key, 21], declare=[]).id

    def dlq(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["dlq", *args, "--url", fresh_vhost.url, "--file", policy])
        return code, capsys.readouterr().out

    def listed() -> list[dict[str, object]]:
        return [r for r in json.loads(dlq("list", "--format", "json")[1])["records"] if r["task_id"] == task_id]

    (record,) = wait_for("the dead letter", listed, timeout=30)
    assert (record["reason"], record["args"]) == ("permanent", [key, 21])
    entry_id = str(record["id"])
    code, out = dlq("replay", "--yes", "--id", entry_id)
    assert code == 0, out
    assert out.splitlines()[-1] == "1 replayed, 0 skipped, 0 failed"
    new_id = out.split(" as task ")[1].split()[0]

    executions = wait_for("the replayed run", lambda: r if len(r := amqp_runs(journal, key)) == 2 else None, timeout=30)
    assert [e["id"] for e in executions] == [task_id, new_id]
    # The replayed run has finished (a failure would have written its dead letter before this line).
    worker.wait_for_log(rf"Task cp\.once\[{new_id}\] succeeded", timeout=30)
    code, out = dlq("list")
    assert code == 0
    assert out.startswith("0 shown, 0 in ")  # the only line: no record left
