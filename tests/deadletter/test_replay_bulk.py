"""Bulk replay on a real redis-server: --max, --spread, --name, --dry-run's breakdown, an interrupted run,
and the grouped counts of ``dlq stats --by``.

Replays go to a queue nobody consumes, so a test reads back exactly what was published.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis
import structlog
from celery import Celery
from support.servers import REPO_ROOT, RedisServer, wait_for

from celery_policy.cli import main
from celery_policy.deadletter.fastpath import RedisPipelinePublisher
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.replay import (
    NAME_HEADER,
    REPLAY_OF_HEADER,
    TokenBucket,
    celery_publisher,
    parse_rate,
    replay_dead_letters,
)
from celery_policy.deadletter.stats import group_counts, parse_dimensions
from celery_policy.deadletter.store import Filter, RedisStreamStore

STREAM = "bulk:dead"
IDLE = "bulk-idle"
HOUR = 1_700_000_000.0 - 1_700_000_000.0 % 3600  # 2023-11-14 22:00 UTC


def seed(store: RedisStreamStore, task: str = "orders.charge", reason: str = "exhausted", **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "task": task,
        "task_id": str(uuid.uuid4()),
        "args": [1],
        "reason": reason,
        "exc_type": "builtins.ConnectionError",
        "first_failure": HOUR + 60,
        "last_failure": HOUR + 60,
        "queue": IDLE,
        **fields,
    }
    record = DeadLetter(**values)
    return record.model_copy(update={"id": store.add(record)})


def signature_dict(task: str) -> dict[str, Any]:
    """A signature as it travels in a message's embed."""
    return {"task": task, "args": [], "kwargs": {}, "options": {}, "subtask_type": None, "immutable": False}


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    """The messages on the idle queue, oldest first."""
    return [json.loads(raw) for raw in reversed(client.lrange(IDLE, 0, -1))]


@pytest.fixture
def store(clean_redis: RedisServer) -> RedisStreamStore:
    return RedisStreamStore(clean_redis.url, STREAM)


@pytest.fixture
def app(clean_redis: RedisServer) -> Celery:
    return Celery("bulk-replay", broker=clean_redis.url)


def test_max_replays_at_most_n_and_leaves_the_rest_in_the_store(
    store: RedisStreamStore, app: Celery, clean_redis: RedisServer
) -> None:
    records = [seed(store) for _ in range(5)]

    report = replay_dead_letters(store, celery_publisher(app), max_records=2, batch=10)

    assert [entry for entry, _ in report.replayed] == [records[0].id, records[1].id]
    assert [r.id for r in store.iter(Filter())] == [r.id for r in records[2:]]
    assert len(queued(clean_redis.client())) == 2


def test_an_interrupted_replay_stops_after_the_record_in_flight_and_deletes_only_what_was_published(
    store: RedisStreamStore, app: Celery, clean_redis: RedisServer
) -> None:
    records = [seed(store) for _ in range(6)]
    stop = threading.Event()
    publish = celery_publisher(app)

    def publish_then_interrupt(record: DeadLetter, task_id: str, **options: Any) -> None:
        publish(record, task_id, **options)
        if record.id == records[2].id:
            stop.set()  # what the SIGTERM / Ctrl-C handler of `dlq replay` does

    report = replay_dead_letters(store, publish_then_interrupt, stop=stop)

    assert report.stopped is not None
    assert "interrupted" in report.stopped
    assert [entry for entry, _ in report.replayed] == [r.id for r in records[:3]]
    assert [r.id for r in store.iter(Filter())] == [r.id for r in records[3:]]
    published = queued(clean_redis.client())
    assert [m["headers"][REPLAY_OF_HEADER].split()[0] for m in published] == [r.id for r in records[:3]]


def test_spread_gives_the_replays_etas_over_the_window_and_name_labels_them(
    store: RedisStreamStore, app: Celery, clean_redis: RedisServer
) -> None:
    for _ in range(20):
        seed(store)
    start = time.time()
    with structlog.testing.capture_logs() as events:
        report = replay_dead_letters(store, celery_publisher(app), spread="10s", name="INC-9", batch=5)

    assert len(report.replayed) == 20
    published = queued(clean_redis.client())
    etas = sorted(dt.datetime.fromisoformat(m["headers"]["eta"]).timestamp() - start for m in published)
    assert 0 <= etas[0] < 0.6
    assert 9.4 < etas[-1] <= 10.5
    assert all(b - a < 1.0 for a, b in itertools.pairwise(etas))
    assert {m["headers"][NAME_HEADER] for m in published} == {"INC-9"}
    assert {m["headers"]["retries"] for m in published} == {0}  # a fresh retry budget
    per_record = [e for e in events if e["event"] == "dlq_replay_record"]
    assert len(per_record) == 20
    assert {(e["name"], e["outcome"]) for e in per_record} == {("INC-9", "replayed")}
    assert [e["event"] for e in events if e["event"] != "dlq_replay_record"] == [
        "dlq_replay_started",
        "dlq_replay_finished",
    ]


def test_a_replay_keeps_the_canvas_options_of_the_record(
    store: RedisStreamStore, app: Celery, clean_redis: RedisServer
) -> None:
    link = signature_dict("t.link")
    record = seed(
        store,
        chain=[{**link, "task": "t.next"}],
        callbacks=[link],
        errbacks=[{**link, "task": "t.err"}],
        root_id="root-1",
        parent_id="parent-1",
        group_id="g-1",
        group_index=3,
        headers={"tenant": "acme", "timelimit": [30, 20], "shadow": "charge-shadow"},
    )

    replay_dead_letters(store, celery_publisher(app))

    (message,) = queued(clean_redis.client())
    headers = message["headers"]
    body = json.loads(base64.b64decode(message["body"]))
    assert (headers["root_id"], headers["parent_id"], headers["group"], headers["group_index"]) == (
        "root-1",
        "parent-1",
        "g-1",
        3,
    )
    assert (headers["tenant"], headers["timelimit"], headers["shadow"]) == ("acme", [30, 20], "charge-shadow")
    assert headers[REPLAY_OF_HEADER] == f"{record.id} {record.task_id}"
    assert [s["task"] for s in body[2]["chain"]] == ["t.next"]
    assert [s["task"] for s in body[2]["callbacks"]] == ["t.link"]
    assert [s["task"] for s in body[2]["errbacks"]] == ["t.err"]


def test_dry_run_prints_the_breakdown_by_task_and_reason_and_changes_nothing(
    store: RedisStreamStore, clean_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        seed(store, "orders.charge", "exhausted")
    seed(store, "orders.charge", "permanent")
    seed(store, "emails.send", "exhausted")

    code = main(["dlq", "replay", "--dry-run", "--rate", "2/s", "--url", clean_redis.url, "--stream", STREAM])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-4:] == [
        "by task: orders.charge 4, emails.send 1",
        "by reason: exhausted 4, permanent 1",
        "would publish at rate 2/s (about 2s); replayed tasks start with a fresh retry budget "
        "(retries 0, the deadline counts from the replay)",
        "5 would replay, 0 skipped, 0 failed",
    ]
    assert store.count() == 5
    assert queued(clean_redis.client()) == []


def test_stats_by_task_exception_and_hour_as_a_table_and_as_json(
    store: RedisStreamStore, clean_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        seed(store)
    seed(store, exc_type="builtins.TimeoutError")
    seed(store, last_failure=HOUR + 3600 + 5)

    where = ["--url", clean_redis.url, "--stream", STREAM]
    code = main(["dlq", "stats", "--by", "task,exception,hour", *where])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [
        "task           exception        hour              count",
        "orders.charge  ConnectionError  2023-11-14 22:00      3",
        "orders.charge  ConnectionError  2023-11-14 23:00      1",
        "orders.charge  TimeoutError     2023-11-14 22:00      1",
        f"5 dead letters in {clean_redis.url} stream '{STREAM}'",
    ]
    code = main(["dlq", "stats", "--by", "exception", "--format", "json", *where])
    data = json.loads(capsys.readouterr().out)
    assert data["by"] == ["exception"]
    assert data["total"] == 5
    assert data["counts"] == [{"exception": "ConnectionError", "count": 4}, {"exception": "TimeoutError", "count": 1}]

    assert main(["dlq", "stats", "--by", "task,colour", *where]) == 2


def test_group_counts_is_a_plain_function_over_records() -> None:
    records = [
        DeadLetter(task="a", task_id="1", reason="exhausted", exc_type="x.E", first_failure=1, last_failure=5),
        DeadLetter(task="a", task_id="2", reason="exhausted", exc_type="x.E", first_failure=2, last_failure=9),
        DeadLetter(task="b", task_id="3", reason="permanent", exc_type="x.F", first_failure=3, last_failure=3,
                   replayable=False),
    ]  # fmt: skip

    rows = group_counts(records, by=("task", "reason"))

    assert [(row.key, row.count, row.replayable, row.first_failure, row.last_failure) for row in rows] == [
        ({"task": "a", "reason": "exhausted"}, 2, 2, 1, 9),
        ({"task": "b", "reason": "permanent"}, 1, 0, 3, 3),
    ]
    with pytest.raises(ValueError, match="unknown dimension 'colour'"):
        parse_dimensions("task,colour")


def test_rates_parse_and_the_token_bucket_paces_to_the_rate() -> None:
    assert (parse_rate("200/s"), parse_rate("60/m"), parse_rate(5), parse_rate(None)) == (200.0, 1.0, 5.0, None)
    for bad in ("fast", "10/week", "0/s", "-1"):
        with pytest.raises(ValueError, match="bad rate"):
            parse_rate(bad)
    now = [0.0]
    bucket = TokenBucket(10.0, burst=1, clock=lambda: now[0])
    taken = 0
    while now[0] < 10.0:  # ten simulated seconds in 1 ms steps
        if bucket.wait_s() == 0:
            bucket.take()
            taken += 1
        now[0] += 0.001
    assert 99 <= taken <= 101


def test_the_pipelined_publisher_writes_the_message_send_task_writes(
    store: RedisStreamStore, app: Celery, clean_redis: RedisServer
) -> None:
    """The same replay through send_task and through the pipeline: the same envelope, headers and body."""
    link = signature_dict("t.link")
    record = seed(
        store, chain=[link], callbacks=[link], errbacks=[link], root_id="r", parent_id="p", priority=5,
        headers={"tenant": "acme", "timelimit": [10, 5]},
    )  # fmt: skip
    client = clean_redis.client()
    celery_publisher(app, "via-send-task")(record, "same-id", eta=2e9, name="INC")
    RedisPipelinePublisher(app, "via-pipeline")(record, "same-id", eta=2e9, name="INC")

    def read(queue: str) -> dict[str, Any]:
        (key,) = client.keys(f"{queue}*")  # priority 5: kombu's list for priority step 3
        assert key == f"{queue}\x06\x163".encode()
        raw = client.lpop(key)
        assert isinstance(raw, bytes)
        message: dict[str, Any] = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        for volatile in ("delivery_tag", "reply_to"):  # a fresh tag per publish; no result consumer to reply to
            message["properties"].pop(volatile)
        message["properties"]["delivery_info"].pop("routing_key")
        # send_task sends False on Celery 5.3 and None on 5.7; a worker reads both as "not ignored"
        # (5.7 then follows the task's own ignore_result), and the pipeline sends None
        message["headers"]["ignore_result"] = bool(message["headers"]["ignore_result"])
        return message

    sent, pushed = read("via-send-task"), read("via-pipeline")
    assert pushed == sent
    assert pushed["headers"]["celery_policy_replay_name"] == "INC"


def test_a_pipelined_replay_deletes_nothing_when_the_broker_is_down(
    store: RedisStreamStore, redis_server_factory: Any
) -> None:
    records = [seed(store) for _ in range(3)]
    down = redis_server_factory()
    down.stop()

    report = replay_dead_letters(store, RedisPipelinePublisher(Celery("down", broker=down.url)), batch=10)

    assert report.replayed == []
    assert [entry for entry, _ in report.failed] == [r.id for r in records]
    assert store.count() == 3


def _interrupt_a_paced_replay(store: RedisStreamStore, clean_redis: RedisServer, sig: signal.Signals) -> None:
    """A real `dlq replay --rate 20/s` process gets ``sig`` after a few replays: every record is either
    published (and deleted) or still in the store, and the report says it was interrupted."""
    records = [seed(store) for _ in range(200)]
    command = [sys.executable, "-m", "celery_policy.cli", "dlq", "replay", "--yes", "--rate", "20/s"]
    process = subprocess.Popen(  # our own CLI
        [*command, "--url", clean_redis.url, "--stream", STREAM], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    client = clean_redis.client()
    wait_for("a few replays", lambda: client.llen(IDLE) >= 10, timeout=30)
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    assert "stopped: interrupted; the records not replayed yet stay in the store" in err
    replayed = int(out.splitlines()[-1].split()[0])
    assert 10 <= replayed < 200
    left = {r.id for r in store.iter(Filter())}
    published = {m["headers"][REPLAY_OF_HEADER].split()[0] for m in queued(client)}
    assert len(published) == replayed
    assert published.isdisjoint(left)
    assert published | left == {r.id for r in records}


def test_sigterm_stops_a_paced_replay_after_the_record_in_flight_and_loses_nothing(
    store: RedisStreamStore, clean_redis: RedisServer
) -> None:
    """A real `dlq replay --rate 20/s` process: SIGTERM ends it; every record is either published (and
    deleted) or still in the store, and the report says it was interrupted."""
    _interrupt_a_paced_replay(store, clean_redis, signal.SIGTERM)


def test_ctrl_c_stops_a_paced_replay_after_the_record_in_flight_and_loses_nothing(
    store: RedisStreamStore, clean_redis: RedisServer
) -> None:
    """Ctrl-C (SIGINT) at a terminal ends the replay the same way, not with a KeyboardInterrupt mid-publish."""
    _interrupt_a_paced_replay(store, clean_redis, signal.SIGINT)


def test_a_record_written_before_the_canvas_fields_existed_still_replays_as_a_plain_task(
    store: RedisStreamStore, app: Celery, clean_redis: RedisServer
) -> None:
    old = {  # the JSON an older celery-policy wrote: no headers, chain, links, ids or routing
        "task": "orders.charge", "task_id": "old-1", "args": [7], "kwargs": {"amount": 10}, "replayable": True,
        "reason": "exhausted", "exc_type": "builtins.ConnectionError", "exc_message": "", "traceback": "",
        "attempts": 3, "first_failure": HOUR, "last_failure": HOUR, "hostname": "w1", "queue": IDLE,
        "policy_source": "",
    }  # fmt: skip
    client = clean_redis.client()
    added = client.xadd(STREAM, {"record": json.dumps(old)})
    entry = added.decode() if isinstance(added, bytes) else str(added)

    report = replay_dead_letters(store, RedisPipelinePublisher(app))

    assert [e for e, _ in report.replayed] == [entry]
    (message,) = queued(client)
    body = json.loads(base64.b64decode(message["body"]))
    assert body[:2] == [[7], {"amount": 10}]
    assert body[2] == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert message["headers"]["root_id"] == message["headers"]["id"]  # a canvas of its own
    assert store.count() == 0


def test_a_record_without_a_queue_goes_where_the_app_routes_its_task(
    store: RedisStreamStore, clean_redis: RedisServer
) -> None:
    routed = Celery("bulk-routed", broker=clean_redis.url)
    routed.conf.task_routes = {"orders.*": {"queue": "orders-q"}}
    seed(store, queue=None)
    seed(store, queue=None)

    report = replay_dead_letters(store, RedisPipelinePublisher(routed), batch=2)

    assert len(report.replayed) == 2
    assert clean_redis.client().llen("orders-q") == 2
