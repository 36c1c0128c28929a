"""Replay that continues the canvas, with real workers on Redis and on RabbitMQ.

A dead-lettered chain step, replayed after its cause was fixed, runs the rest of
the chain once with its own result; the link and link_error of a replayed task
fire once per outcome; a record whose arguments or canvas were redacted is refused;
a chord member is refused with the reason. The same test runs on both brokers:
on Redis the store is the stream, on RabbitMQ the ``celery.dead`` queue.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import redis
from celery import Celery, chain
from support.servers import REPO_ROOT, RedisServer, WorkerProcess, wait_for

from celery_policy.cli import main
from celery_policy.deadletter.amqp import AmqpDeadLetterStore
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.replay import NAME_HEADER, REPLAY_OF_HEADER
from celery_policy.deadletter.store import Filter, RedisStreamStore

if TYPE_CHECKING:
    from support.rabbit import RabbitVhost

pytest_plugins = ["support.rabbit"]  # fresh_vhost
pytestmark = pytest.mark.worker

APP = "tests.support.apps.replay.replayapp"
POLICY = REPO_ROOT / "tests" / "support" / "apps" / "replay" / "replay.yaml"
STREAM = "rp:dead"
WorkerFactory = Callable[..., WorkerProcess]


@dataclass
class Broker:
    kind: str
    url: str
    backend_url: str  # the workers' result backend (the journal's Redis)
    journal: redis.Redis
    store: RedisStreamStore | AmqpDeadLetterStore
    producer: Celery

    def dlq(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        where = ["--url", self.url, "--file", str(POLICY)]
        if self.kind == "redis":
            where += ["--stream", STREAM]
        code = main(["dlq", *args, *where])
        out, err = capsys.readouterr()
        return code, out, err

    def runs(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.journal.lrange(f"rp:runs:{key}", 0, -1)]

    def record_of(self, task_id: str) -> DeadLetter:
        def found() -> DeadLetter | None:
            return next((r for r in self.store.iter(Filter()) if r.task_id == task_id), None)

        return wait_for(f"the dead letter of {task_id}", found, timeout=30)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, clean_redis: RedisServer, celery_worker_process: WorkerFactory) -> Broker:
    if request.param == "redis":
        url = clean_redis.url
        store: RedisStreamStore | AmqpDeadLetterStore = RedisStreamStore(url, STREAM)
    else:
        vhost: RabbitVhost = request.getfixturevalue("fresh_vhost")
        url = vhost.url
        store = AmqpDeadLetterStore(url, [], default_queue="celery")
    env = {"RP_BROKER_URL": url, "RP_JOURNAL_URL": clean_redis.url, "CELERY_POLICY_FILE": str(POLICY)}
    celery_worker_process(APP, env=env, cwd=REPO_ROOT, pythonpath=(REPO_ROOT,))
    producer = Celery("rp-producer", broker=url)  # no backend: the tests read outcomes from the journal
    producer.conf.update(task_serializer="json", accept_content=["json"])
    return Broker(request.param, url, clean_redis.url, clean_redis.client(), store, producer)


def labels(runs: list[dict[str, Any]]) -> list[str]:
    return [run["label"] for run in runs]


def settle_s() -> float:
    """How long to keep watching for a duplicate run after the expected one: a worker picks a message up in
    milliseconds, so a second run of the same step would show well within this."""
    return 1.0


def test_a_replayed_chain_step_runs_the_rest_of_the_chain_once_with_its_result(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"chain-{time.time_ns()}"
    sig = broker.producer.signature
    canvas = chain(
        sig("rp.step", args=(1,), kwargs={"key": key, "label": "a"}),
        sig("rp.flaky", kwargs={"key": key, "label": "b"}),
        sig("rp.step", kwargs={"key": key, "label": "c"}),
    )
    result = canvas.apply_async()
    b_id = result.parent.id
    a_id = result.parent.parent.id
    record = broker.record_of(b_id)
    assert labels(broker.runs(key)) == ["a", "b"]
    assert (record.root_id, record.parent_id) == (a_id, a_id)
    assert [s["task"] for s in record.chain] == ["rp.step"]  # c, still to run
    assert record.replayable

    code, out, err = broker.dlq(capsys, "show", str(record.id))
    assert code == 0, err
    assert f"       root_id: {a_id}\n     parent_id: {a_id}\n         chain: rp.step\n" in out

    broker.journal.set(f"rp:fixed:{key}", "1")  # the cause is fixed
    code, out, err = broker.dlq(capsys, "replay", "--yes", "--id", str(record.id), "--name", "INC-7")
    assert code == 0, out + err
    assert out.splitlines()[-1] == "1 replayed, 0 skipped, 0 failed (incident INC-7)"
    new_b = out.split(" as task ")[1].split()[0]

    runs = wait_for("c to run", lambda: r if "c" in labels(r := broker.runs(key)) else None, timeout=30)
    time.sleep(settle_s())
    runs = broker.runs(key)
    assert labels(runs) == ["a", "b", "b", "c"]
    replayed_b, c = runs[2], runs[3]
    assert replayed_b["id"] == new_b != b_id
    assert replayed_b["headers"] == {REPLAY_OF_HEADER: f"{record.id} {b_id}", NAME_HEADER: "INC-7"}
    assert replayed_b["retries"] == 0
    assert c["value"] == 20  # b's result: a gave 2, b multiplied by 10
    assert (c["parent_id"], c["root_id"]) == (new_b, a_id)  # the replay sits where b sat in the canvas
    assert [r for r in broker.store.iter(Filter()) if r.task_id == b_id] == []


def test_link_and_link_error_of_a_replayed_task_fire_once_per_outcome(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"links-{time.time_ns()}"
    sig = broker.producer.signature
    link = sig("rp.step", kwargs={"key": key, "label": "link"})
    link_error = sig("rp.on_error", kwargs={"key": key})
    first = sig("rp.flaky", args=(3,), kwargs={"key": key, "label": "b"}).apply_async(
        link=link, link_error=link_error, headers={"tenant": "acme"}
    )
    record = broker.record_of(first.id)
    assert record.headers.get("tenant") == "acme"  # the task's own header
    assert not {"celery_policy", "x-death", "redelivered", "retries", "argsrepr"} & set(record.headers)
    wait_for("the first errback", lambda: labels(broker.runs(key)) == ["b", "errback"], timeout=30)
    assert [s["task"] for s in record.callbacks] == ["rp.step"]
    assert [s["task"] for s in record.errbacks] == ["rp.on_error"]

    # replayed while the cause is still there: it fails again, its errback fires once, for the replay
    code, out, err = broker.dlq(capsys, "replay", "--yes", "--id", str(record.id))
    assert code == 0, out + err
    second_id = out.split(" as task ")[1].split()[0]
    second = broker.record_of(second_id)
    wait_for("the second errback", lambda: len(broker.runs(key)) == 4, timeout=30)
    time.sleep(settle_s())
    runs = broker.runs(key)
    assert labels(runs) == ["b", "errback", "b", "errback"]
    assert [runs[1]["failed_id"], runs[3]["failed_id"]] == [first.id, second_id]

    # fixed, replayed again: the link fires once with the result, the errback not at all
    broker.journal.set(f"rp:fixed:{key}", "1")
    code, out, err = broker.dlq(capsys, "replay", "--yes", "--id", str(second.id))
    assert code == 0, out + err
    wait_for("the link", lambda: "link" in labels(broker.runs(key)), timeout=30)
    time.sleep(settle_s())
    runs = broker.runs(key)
    assert labels(runs) == ["b", "errback", "b", "errback", "b", "link"]
    assert runs[5]["value"] == 30
    assert [run["headers"].get("tenant") for run in runs if run["label"] == "b"] == ["acme"] * 3


def test_a_redacted_record_is_refused_and_kept_unless_allowed(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"secret-{time.time_ns()}"
    sig = broker.producer.signature
    direct = sig("rp.secret", kwargs={"key": key, "password": "hunter22"}).apply_async()
    # a chain whose next step carries a secret: the canvas is redacted, so this record is not replayable either
    in_chain = chain(
        sig("rp.flaky", args=(1,), kwargs={"key": key, "label": "b"}),
        sig("rp.step", kwargs={"key": key, "label": "c", "password": "hunter22"}),
    ).apply_async()
    secret_record = broker.record_of(direct.id)
    chain_record = broker.record_of(in_chain.parent.id)
    assert secret_record.kwargs["password"] == "***"
    assert chain_record.chain[0]["kwargs"]["password"] == "***"
    assert not secret_record.replayable
    assert not chain_record.replayable
    assert "hunter22" not in secret_record.model_dump_json() + chain_record.model_dump_json()

    broker.journal.set(f"rp:fixed:{key}", "1")
    code, out, err = broker.dlq(capsys, "replay", "--yes")
    assert code == 0, out + err
    assert out.splitlines()[-1] == "0 replayed, 2 skipped, 0 failed"
    assert out.count("arguments were redacted when stored") == 2
    time.sleep(settle_s())
    assert labels(broker.runs(key)) == ["secret", "b"]  # nothing ran again
    assert {r.id for r in broker.store.iter(Filter())} == {secret_record.id, chain_record.id}


# A chord needs the result backend on the producer side, whose results subscribe to it and unsubscribe when
# garbage-collected: at interpreter exit, after the server is gone. So the chord is sent from a process of its own.
_APPLY_CHORD = """
import sys
from celery import Celery, chord
url, backend, key = sys.argv[1:4]
app = Celery("rp-chord", broker=url, backend=backend)
app.conf.update(task_serializer="json", accept_content=["json"])
header = [app.signature("rp.step", args=(1,), kwargs={"key": key, "label": "ok"}),
          app.signature("rp.flaky", args=(2,), kwargs={"key": key, "label": "b"})]
result = chord(header, app.signature("rp.step", kwargs={"key": key, "label": "body"})).apply_async()
print(result.parent.id, result.parent.results[1].id)
"""


def apply_chord(url: str, backend: str, key: str) -> tuple[str, str]:
    """Send ``chord([rp.step, rp.flaky], rp.step)``; returns the chord's group id and the rp.flaky member's id."""
    done = subprocess.run(  # this interpreter, our own script
        [sys.executable, "-c", _APPLY_CHORD, url, backend, key], capture_output=True, text=True, timeout=60, check=True
    )
    chord_id, member_id = done.stdout.split()
    return chord_id, member_id


def test_a_chord_member_is_refused_with_the_reason_and_replayed_alone_on_request(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"chord-{time.time_ns()}"
    chord_id, member_id = apply_chord(broker.url, broker.backend_url, key)
    record = broker.record_of(member_id)
    assert record.chord is not None
    assert record.chord["task"] == "rp.step"
    assert record.group_id == chord_id

    broker.journal.set(f"rp:fixed:{key}", "1")
    code, out, _ = broker.dlq(capsys, "replay", "--yes", "--id", str(record.id))
    assert out.splitlines()[-1] == "0 replayed, 1 skipped, 0 failed"
    assert f"member of chord {chord_id}, which already failed; Celery cannot rejoin it" in out

    code, out, err = broker.dlq(capsys, "replay", "--yes", "--id", str(record.id), "--without-chord")
    assert code == 0, out + err
    wait_for("the member to run alone", lambda: labels(broker.runs(key)).count("b") == 2, timeout=30)
    time.sleep(settle_s())
    assert "body" not in labels(broker.runs(key))
