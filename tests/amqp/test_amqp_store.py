"""The AMQP dead-letter store against a real RabbitMQ (a fresh vhost per test).

Listing browses with basic_get and hands everything back, so it must neither
lose nor reorder records; delete removes exactly one; replay is consume
unacked, publish with confirm, then ack, so a replaying process killed at any
point loses nothing (at worst one record is replayed twice).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from support.harness import amqp_message_count
from support.servers import REPO_ROOT, wait_for

from celery_policy.cli import main
from celery_policy.deadletter.amqp import AmqpDeadLetterStore
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter

if TYPE_CHECKING:
    from support.rabbit import RabbitVhost

pytest_plugins = ["support.rabbit"]  # rabbit_broker, rabbit_vhost, fresh_vhost

IDLE = "idle"  # a task queue no worker consumes: what a replay publishes stays there


def record(n: int, *, task: str = "shop.charge", reason: str = "permanent", secret: bool = False) -> DeadLetter:
    return DeadLetter(
        task=task,
        task_id=f"task-{n}",
        args=[n],
        kwargs={"password": "***"} if secret else {"order": n},
        replayable=not secret,
        reason=reason,
        exc_type="shop.errors.Declined",
        exc_message=f"declined {n}",
        first_failure=1_700_000_000.0 + n,
        last_failure=1_700_000_000.0 + n,
        queue=IDLE,
    )


@pytest.fixture
def store(fresh_vhost: RabbitVhost) -> AmqpDeadLetterStore:
    with Connection(fresh_vhost.url) as connection:  # type: ignore[no-untyped-call]  # the task queue a replay publishes to
        Queue(IDLE, Exchange(IDLE), IDLE)(connection.default_channel).declare()  # type: ignore[no-untyped-call]
    return AmqpDeadLetterStore(fresh_vhost.url, [IDLE], default_queue=IDLE)


def published_task_ids(url: str) -> list[str]:
    """Drain ``idle`` and return the original task ids (args[0]) of the tasks a replay published there."""
    import json

    found: list[str] = []
    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.connection.channel()
        while (message := channel.basic_get(IDLE, no_ack=True)) is not None:
            found.append(f"task-{json.loads(message.body)[0][0]}")
    return found


def test_listing_twice_neither_loses_nor_reorders_and_delete_removes_exactly_one(store: AmqpDeadLetterStore) -> None:
    ids = [store.add(record(n)) for n in range(6)]

    first = [r.id for r in store.iter(Filter())]
    second = [r.id for r in store.iter(Filter())]

    assert first == second == ids
    assert store.count() == 6
    assert [r.task_id for r in store.iter(Filter(), limit=2)] == ["task-0", "task-1"]
    assert store.delete(ids[2]) is True
    assert store.delete(ids[2]) is False
    assert [r.id for r in store.iter(Filter())] == ids[:2] + ids[3:]
    shown = list(store.iter(Filter(ids=(ids[4],))))
    assert [(r.task_id, r.kwargs, r.reason) for r in shown] == [("task-4", {"order": 4}, "permanent")]


def test_dlq_commands_list_show_replay_and_purge_on_the_broker(
    store: AmqpDeadLetterStore, fresh_vhost: RabbitVhost, capsys: pytest.CaptureFixture[str]
) -> None:
    store.add(record(1))
    secret_id = store.add(record(2, secret=True))
    other_id = store.add(record(3, task="mail.send", reason="exhausted"))

    def dlq(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["dlq", *args, "--url", fresh_vhost.url])
        return code, capsys.readouterr().out

    # the dead queues read are those of the policy's queues: without one that routes to 'idle', none of these
    code, out = dlq("list", "--file", str(REPO_ROOT / "tests" / "support" / "apps" / "amqp" / "policy.yaml"))
    assert (code, out.splitlines()[-1].split(" in ")[0]) == (0, "0 shown, 0")
    policy = REPO_ROOT / "tests" / "support" / "apps" / "amqp" / "idle_policy.yaml"
    code, out = dlq("list", "--file", str(policy), "--task", "shop.*")
    assert code == 0
    assert [line.split()[3] for line in out.splitlines()[:-1]] == ["shop.charge", "shop.charge"]
    code, out = dlq("show", other_id, "--file", str(policy))
    assert code == 0
    assert "mail.send" in out
    assert "exhausted" in out
    code, out = dlq("replay", "--yes", "--file", str(policy))
    assert code == 0
    assert out.splitlines()[-1] == "2 replayed, 1 skipped, 0 failed"
    assert f"skipped {secret_id}: arguments were redacted" in out
    assert sorted(published_task_ids(fresh_vhost.url)) == ["task-1", "task-3"]
    assert [r.id for r in store.iter(Filter())] == [secret_id]
    code, out = dlq("purge", "--file", str(policy), "--yes")
    assert code == 0
    assert out.strip().endswith("queues 'idle.dead', 'celery.dead'")  # the policy's queue and the default queue
    assert out.startswith("deleted 1 dead letters from amqp://guest:***@127.0.0.1:5672/")
    assert store.count() == 0


def test_a_replay_killed_between_publish_and_ack_keeps_that_record_a_duplicate_never_a_loss(
    store: AmqpDeadLetterStore, fresh_vhost: RabbitVhost
) -> None:
    ids = [store.add(record(n)) for n in range(6)]

    done = subprocess.run(
        [sys.executable, "-m", "tests.support.apps.amqp.replay_and_die", fresh_vhost.url, "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 9, done.stderr
    assert "published 3, dying before the ack" in done.stdout
    # the first two were acked; the third was published and not acked: it is in both places
    assert published_task_ids(fresh_vhost.url) == ["task-0", "task-1", "task-2"]
    assert [r.id for r in store.iter(Filter())] == ids[2:]  # back in place, in order


def test_sigkill_of_the_dlq_replay_command_at_any_moment_loses_no_record(
    store: AmqpDeadLetterStore, fresh_vhost: RabbitVhost
) -> None:
    total = 300
    for n in range(total):
        store.add(record(n))
    policy = REPO_ROOT / "tests" / "support" / "apps" / "amqp" / "idle_policy.yaml"
    command = [
        sys.executable,
        "-m",
        "celery_policy.cli",
        "dlq",
        "replay",
        "--yes",
        "--url",
        fresh_vhost.url,
        "--file",
        str(policy),
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # kill it once it has replayed some records and before it replayed them all
        wait_for(
            "the replay to publish", lambda: amqp_message_count(fresh_vhost.url, IDLE) >= 20, timeout=30, interval=0.01
        )
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL

    expected = {f"task-{n}" for n in range(total)}
    published: list[str] = []

    def accounted() -> tuple[list[str], list[str]] | None:
        # the broker requeues what the dead connection held once it notices the connection is gone
        published.extend(published_task_ids(fresh_vhost.url))  # drains the queue: keep what it read
        remaining = [str(r.task_id) for r in store.iter(Filter())]
        return (published, remaining) if set(published) | set(remaining) == expected else None

    published, remaining = wait_for("every record published or back in the dead queue (nothing lost)", accounted)
    assert 20 <= len(published) < total, "the kill did not land mid-replay"
    assert len(set(published) & set(remaining)) <= 1  # at most the record in flight is duplicated
    assert remaining == sorted(remaining, key=lambda t: int(t.split("-")[1]))  # the rest kept its order
