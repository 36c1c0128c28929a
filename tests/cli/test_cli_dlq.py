"""``celery-policy dlq list|show|replay|purge`` against a real redis-server (and a real worker for the round trip).

The module's private redis-server is the broker and the dead-letter store
(stream ``dl:dead``). Seeded records point at the queue ``dl-cli-idle``, which no
worker consumes, so a test can see exactly what a replay published; the round
trip uses a record written by a real worker for ``dl-cli``.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from support.harness import (
    DEADLETTER_POLICY,
    DL_STREAM,
    deadletter_worker,
    dl_runs,
    new_key,
    producer,
    records_for,
    wait_final,
    wait_record,
)
from support.servers import RedisServer, WorkerProcess, running

from celery_policy.cli import main
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.replay import celery_publisher, replay
from celery_policy.deadletter.store import Filter, RedisStreamStore

IDLE = "dl-cli-idle"  # nobody consumes it: what a replay published stays there
LIVE = "dl-cli"  # the module's solo worker
WHEN = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("cli-redis")).start()
    yield server
    server.close()


@pytest.fixture
def client(server: RedisServer) -> redis.Redis:
    client = server.client()
    client.delete(DL_STREAM, IDLE)
    return client


@pytest.fixture
def store(server: RedisServer, client: redis.Redis) -> RedisStreamStore:
    return RedisStreamStore(server.url, DL_STREAM)


@pytest.fixture
def dlq(capsys: pytest.CaptureFixture[str], server: RedisServer) -> Run:
    """Run ``celery-policy dlq ...`` on the module's store (unless the test passes --url); returns (code, out, err)."""

    def run(*args: str, url: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["dlq", *args, "--url", url or server.url, "--stream", DL_STREAM])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def seed(store: RedisStreamStore, task: str = "orders.charge", reason: str = "permanent", **fields: Any) -> DeadLetter:
    """Add one record; returns it with its entry id."""
    values: dict[str, Any] = {
        "task": task,
        "task_id": str(uuid.uuid4()),
        "args": [7],
        "kwargs": {"amount": 10},
        "reason": reason,
        "exc_type": "proj.errors.PaymentDeclined",
        "exc_message": "card declined",
        "traceback": 'Traceback (most recent call last):\n  File "proj/tasks.py", line 9, in charge\n'
        "proj.errors.PaymentDeclined: card declined\n",
        "attempts": 3,
        "first_failure": WHEN - 30,
        "last_failure": WHEN,
        "hostname": "w1@host",
        "queue": IDLE,
        "policy_source": "policies/prod.yaml:12 (tasks.orders.charge)",
    }
    values.update(fields)
    written = DeadLetter(**values)
    return written.model_copy(update={"id": store.add(written)})


def where(server: RedisServer) -> str:
    return f"{server.url} stream '{DL_STREAM}'"


# --- list ---------------------------------------------------------------------------------------------


def test_list_prints_one_line_per_record_oldest_first_and_a_total(
    dlq: Run, store: RedisStreamStore, server: RedisServer
) -> None:
    a = seed(store)
    limit = {"exc_type": "billiard.exceptions.TimeLimitExceeded", "exc_message": "TimeLimitExceeded(300.0,)"}
    b = seed(store, "reports.daily", "time_limit", attempts=1, **limit)
    long = {"exc_type": "builtins.ConnectionError", "exc_message": "gateway said:\n" + "x" * 80}
    c = seed(store, "orders.refund", "exhausted", last_failure=WHEN + 61, **long)

    code, out, err = dlq("list")

    assert (code, err) == (0, "")
    assert out == (
        f"{a.id}  2023-11-14 22:13:20  orders.charge  permanent  PaymentDeclined: card declined  attempts=3\n"
        f"{b.id}  2023-11-14 22:13:20  reports.daily  time_limit  "
        "TimeLimitExceeded: TimeLimitExceeded(300.0,)  attempts=1\n"
        f"{c.id}  2023-11-14 22:14:21  orders.refund  exhausted  "
        f"ConnectionError: gateway said: {'x' * 45}…  attempts=3\n"  # one line, cut at 60 characters
        f"3 shown, 3 in {where(server)}\n"
    )


def test_list_filters_by_task_reason_age_id_and_limit(dlq: Run, store: RedisStreamStore) -> None:
    now = time.time()
    charge = seed(store, "orders.charge", "exhausted", last_failure=now - 60)
    refund = seed(store, "orders.refund", "permanent", last_failure=now - 30)
    old = seed(store, "orders.ship", "permanent", last_failure=now - 7200)
    report = seed(store, "reports.daily", "permanent", last_failure=now - 10)

    def ids(*args: str) -> list[str]:
        code, out, _ = dlq("list", "--format", "json", *args)
        assert code == 0
        return [r["id"] for r in json.loads(out)["records"]]

    assert ids() == [charge.id, refund.id, old.id, report.id]
    assert ids("--task", "orders.*") == [charge.id, refund.id, old.id]
    assert ids("--reason", "permanent") == [refund.id, old.id, report.id]
    assert ids("--since", "1h") == [charge.id, refund.id, report.id]
    assert ids("--task", "orders.*", "--reason", "permanent", "--since", "1h") == [refund.id]
    assert ids("--id", str(report.id), "--id", str(charge.id)) == [report.id, charge.id]
    assert ids("--limit", "2") == [charge.id, refund.id]


def test_list_json_is_machine_readable_with_every_field(dlq: Run, store: RedisStreamStore) -> None:
    written = [seed(store), seed(store, "reports.daily", "time_limit", kwargs={}, replayable=False)]

    code, out, err = dlq("list", "--format", "json", "--limit", "1")

    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data == {"version": 1, "total": 2, "records": [written[0].model_dump()]}


def test_list_with_bad_input_is_a_usage_error(dlq: Run, store: RedisStreamStore, tmp_path: Any) -> None:
    code, _, err = dlq("list", "--since", "soon")
    assert code == 2
    assert "--since" in err

    code, _, err = dlq("list", "--reason", "bored")
    assert code == 2
    assert "bored" in err

    code, _, err = dlq("list", "--file", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "cannot read policy file" in err
    assert "missing.yaml" in err


def test_list_reads_the_stream_from_the_policy_file_and_the_store_from_the_app_broker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: RedisServer, store: RedisStreamStore
) -> None:
    monkeypatch.setenv("DL_BROKER_URL", server.url)
    monkeypatch.delitem(sys.modules, "tests.support.apps.deadletter.cliapp", raising=False)
    record = seed(store)

    code = main(
        [
            "dlq",
            "list",
            "--app",
            "tests.support.apps.deadletter.cliapp",
            "--file",
            str(DEADLETTER_POLICY),
            "--format",
            "json",
        ]
    )

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert [r["id"] for r in json.loads(out)["records"]] == [record.id]  # stream dl:dead from the file


def test_list_with_the_store_down_exits_3(dlq: Run, redis_server_factory: Callable[..., RedisServer]) -> None:
    down = redis_server_factory()
    down.stop()

    code, out, err = dlq("list", url=down.url)

    assert (code, out) == (3, "")
    assert f"error: dead-letter store {down.url} stream '{DL_STREAM}' unavailable" in err


# --- show ---------------------------------------------------------------------------------------------


def test_show_prints_every_field_and_the_traceback(dlq: Run, store: RedisStreamStore) -> None:
    record = seed(store)

    code, out, err = dlq("show", str(record.id))

    assert (code, err) == (0, "")
    assert out == (
        "          task: orders.charge\n"
        f"       task_id: {record.task_id}\n"
        "          args: [7]\n"
        "        kwargs: {'amount': 10}\n"
        "    replayable: True\n"
        "        reason: permanent\n"
        "      exc_type: proj.errors.PaymentDeclined\n"
        "   exc_message: card declined\n"
        "      attempts: 3\n"
        " first_failure: 2023-11-14 22:12:50 UTC\n"
        "  last_failure: 2023-11-14 22:13:20 UTC\n"
        "      hostname: w1@host\n"
        f"         queue: {IDLE}\n"
        " policy_source: policies/prod.yaml:12 (tasks.orders.charge)\n"
        f"            id: {record.id}\n"
        "     traceback:\n"
        "Traceback (most recent call last):\n"
        '  File "proj/tasks.py", line 9, in charge\n'
        "proj.errors.PaymentDeclined: card declined\n"
    )


@pytest.mark.parametrize("entry", ["1-0", "not-an-id"])
def test_show_of_an_unknown_or_malformed_id_exits_1(
    dlq: Run, store: RedisStreamStore, server: RedisServer, entry: str
) -> None:
    seed(store)

    code, out, err = dlq("show", entry)

    assert (code, out) == (1, "")
    assert err == f"error: no dead letter {entry} in {where(server)}\n"


# --- replay -------------------------------------------------------------------------------------------


def replayable(store: RedisStreamStore, **fields: Any) -> DeadLetter:
    return seed(store, "dl.once", args=[new_key("replay"), 21], kwargs={}, **fields)


def redacted(store: RedisStreamStore) -> DeadLetter:
    return seed(store, "dl.secret", args=["k"], kwargs={"password": "***"}, replayable=False)


def body(message: dict[str, Any]) -> list[Any]:
    """(args, kwargs) of a Celery message as stored by kombu's Redis transport."""
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return [args, kwargs]


def queued(client: redis.Redis, queue: str = IDLE) -> list[dict[str, Any]]:
    """The messages waiting in ``queue`` (kombu's Redis list), oldest first."""
    return [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]


def test_replay_dry_run_says_what_it_would_do_and_changes_nothing(
    dlq: Run, store: RedisStreamStore, client: redis.Redis
) -> None:
    good, secret = replayable(store), redacted(store)

    code, out, err = dlq("replay", "--yes", "--dry-run")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert re.fullmatch(rf"would replay {good.id} as task [0-9a-f-]{{36}}", lines[0]), lines[0]
    assert lines[1:] == [
        f"skipped {secret.id}: arguments were redacted when stored; "
        "replay it by hand, or pass --allow-redacted to send '***'",
        "by task: dl.once 1",
        "by reason: permanent 1",
        "would publish at rate unlimited; replayed tasks start with a fresh retry budget "
        "(retries 0, the deadline counts from the replay)",
        "1 would replay, 1 skipped, 0 failed",
    ]
    assert [r.id for r in store.iter(Filter())] == [good.id, secret.id]
    assert queued(client) == []


def test_replay_publishes_each_record_as_a_new_task_and_deletes_it(
    dlq: Run, store: RedisStreamStore, client: redis.Redis
) -> None:
    first, second = replayable(store), replayable(store)
    other = seed(store, "orders.charge")

    code, out, err = dlq("replay", "--yes", "--task", "dl.*")

    assert (code, err) == (0, "")
    new_ids = re.findall(r"^replayed \S+ as task (\S+)$", out, re.MULTILINE)
    assert out.splitlines()[-1] == "2 replayed, 0 skipped, 0 failed"
    messages = queued(client)
    assert [m["headers"]["id"] for m in messages] == new_ids
    assert not {first.task_id, second.task_id} & set(new_ids)  # new ids
    assert [m["headers"]["task"] for m in messages] == ["dl.once", "dl.once"]
    assert [body(m) for m in messages] == [[first.args, {}], [second.args, {}]]  # the original arguments
    assert [r.id for r in store.iter(Filter())] == [other.id]  # only the matching records were deleted


def test_replay_skips_redacted_records_with_a_message_and_keeps_them(
    dlq: Run, store: RedisStreamStore, client: redis.Redis
) -> None:
    secret = redacted(store)

    code, out, err = dlq("replay", "--yes")

    assert (code, err) == (0, "")
    assert out == (
        f"skipped {secret.id}: arguments were redacted when stored; "
        "replay it by hand, or pass --allow-redacted to send '***'\n"
        "0 replayed, 1 skipped, 0 failed\n"
    )
    assert [r.id for r in store.iter(Filter())] == [secret.id]
    assert queued(client) == []


def test_replay_with_the_broker_down_keeps_every_record_and_exits_3(
    dlq: Run, store: RedisStreamStore, redis_server_factory: Callable[..., RedisServer]
) -> None:
    broker = redis_server_factory()
    broker.stop()
    records = [replayable(store) for _ in range(3)]

    started = time.monotonic()
    code, out, err = dlq("replay", "--yes", "--broker", broker.url)

    assert code == 3
    assert out.splitlines()[-1] == "0 replayed, 0 skipped, 3 failed"
    for record in records:
        assert f"failed {record.id}: publish failed:" in err
    assert [r.model_dump() for r in store.iter(Filter())] == [r.model_dump() for r in records]
    assert time.monotonic() - started < 30


def test_replay_with_the_store_down_exits_3_and_loses_nothing(
    dlq: Run, client: redis.Redis, redis_server_factory: Callable[..., RedisServer], server: RedisServer
) -> None:
    store_server = redis_server_factory(appendonly=True)
    store = RedisStreamStore(store_server.url, DL_STREAM)
    records = [replayable(store) for _ in range(2)]
    store_server.stop()

    code, out, err = dlq("replay", "--yes", "--broker", server.url, url=store_server.url)

    assert (code, out) == (3, "")
    assert f"error: dead-letter store {store_server.url} stream '{DL_STREAM}' unavailable" in err
    assert queued(client) == []
    store_server.start()
    assert [r.model_dump() for r in store.iter(Filter())] == [r.model_dump() for r in records]


def test_replay_stops_when_the_store_goes_down_midway_duplicating_at_most_the_in_flight_record(
    client: redis.Redis, redis_server_factory: Callable[..., RedisServer], server: RedisServer
) -> None:
    """Python API: the store dies right after the first publish; nothing is lost, only that record can run twice."""
    store_server = redis_server_factory(appendonly=True)
    store = RedisStreamStore(store_server.url, DL_STREAM)
    records = [replayable(store) for _ in range(3)]
    app = producer(server.url)
    publish = celery_publisher(app)

    def publish_then_lose_the_store(record: DeadLetter, task_id: str) -> None:
        publish(record, task_id)
        store_server.stop()

    report = replay(store, list(store.iter(Filter())), publish_then_lose_the_store)
    app.close()

    assert report.replayed == []
    assert [entry for entry, _ in report.failed] == [records[0].id]
    assert "but not deleted" in report.failed[0][1]
    assert report.stopped is not None
    assert len(queued(client)) == 1  # the in-flight record only; the others were not published
    store_server.start()
    assert [r.id for r in store.iter(Filter())] == [r.id for r in records]


@pytest.fixture(scope="module")
def live_worker(
    server: RedisServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    worker = deadletter_worker(tmp_path_factory.mktemp("cli-worker"), broker_url=server.url, queues=[LIVE], name="cli")
    with running(worker, request.session):
        yield worker


@pytest.mark.worker
def test_replay_round_trip_a_dead_letter_runs_again_succeeds_and_its_record_is_gone(
    live_worker: WorkerProcess, dlq: Run, store: RedisStreamStore, client: redis.Redis, server: RedisServer
) -> None:
    app: Celery = producer(server.url)
    key = new_key("roundtrip")
    original = app.send_task("dl.once", args=(key, 21), queue=LIVE).id
    record = wait_record(store, original)
    assert (record.reason, record.queue, record.replayable) == ("permanent", LIVE, True)

    code, out, err = dlq("replay", "--yes", "--id", str(record.id))

    assert (code, err) == (0, "")
    (new_id,) = re.findall(rf"^replayed {record.id} as task (\S+)$", out, re.MULTILINE)
    assert new_id != original
    meta = wait_final(client, new_id)
    assert (meta["status"], meta["result"]) == ("SUCCESS", 42)
    assert [(r["id"], r["task"]) for r in dl_runs(client, key)] == [(original, "dl.once"), (new_id, "dl.once")]
    assert records_for(store, original) == []
    assert records_for(store, new_id) == []
    assert store.count() == 0
    app.close()


# --- purge --------------------------------------------------------------------------------------------


def test_purge_without_yes_refuses_and_deletes_nothing(dlq: Run, store: RedisStreamStore) -> None:
    written = [seed(store, "orders.charge"), seed(store, "orders.refund")]

    code, out, err = dlq("purge", "--task", "orders.*")

    assert (code, out) == (2, "")
    assert err == "error: purge deletes dead letters; pass --yes to confirm\n"
    assert [r.id for r in store.iter(Filter())] == [r.id for r in written]


def test_purge_with_yes_deletes_only_the_matching_records(
    dlq: Run, store: RedisStreamStore, server: RedisServer
) -> None:
    charge = seed(store, "orders.charge", "exhausted")
    refund = seed(store, "orders.refund", "permanent")
    report = seed(store, "reports.daily", "permanent")
    ship = seed(store, "orders.ship", "permanent")

    code, out, err = dlq("purge", "--task", "orders.*", "--reason", "permanent", "--yes")

    assert (code, err) == (0, "")
    assert out == f"deleted 2 dead letters from {where(server)}\n"
    assert [r.id for r in store.iter(Filter())] == [charge.id, report.id]

    # exactly the two matching entries are gone from the stream (an XRANGE on each id finds nothing)
    def entries(record: DeadLetter) -> list[Any]:
        return list(store.client.xrange(store.stream, str(record.id), str(record.id)) or [])

    assert [entries(r) for r in (refund, ship)] == [[], []]
    assert len(entries(charge)) == 1


def test_replay_in_batches_publishes_and_deletes_every_record(
    dlq: Run, store: RedisStreamStore, client: redis.Redis
) -> None:
    records = [replayable(store) for _ in range(5)]

    code, out, err = dlq("replay", "--yes", "--batch", "2")

    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "5 replayed, 0 skipped, 0 failed"
    assert store.count() == 0
    assert sorted(body(m)[0][0] for m in queued(client)) == sorted(r.args[0] for r in records)


def test_replay_without_yes_and_without_a_terminal_refuses_and_changes_nothing(
    dlq: Run, store: RedisStreamStore, client: redis.Redis
) -> None:
    record = replayable(store)

    code, out, err = dlq("replay")

    assert (code, out) == (2, "")
    assert "pass --yes to confirm" in err
    assert [r.id for r in store.iter(Filter())] == [record.id]
    assert queued(client) == []


def test_replay_to_another_queue_links_back_to_the_dead_record(
    dlq: Run, store: RedisStreamStore, client: redis.Redis
) -> None:
    record = replayable(store)
    client.delete("dl-cli-elsewhere")

    code, _out, err = dlq("replay", "--yes", "--queue", "dl-cli-elsewhere")

    assert (code, err) == (0, "")
    assert queued(client) == []
    (message,) = queued(client, "dl-cli-elsewhere")
    assert message["headers"]["celery_policy_replay_of"] == f"{record.id} {record.task_id}"
    assert message["headers"]["id"] != record.task_id  # a new task id


def test_redacted_records_replay_only_when_allowed(dlq: Run, store: RedisStreamStore, client: redis.Redis) -> None:
    secret = redacted(store)

    code, out, _ = dlq("replay", "--yes")
    assert (code, out.splitlines()[-1]) == (0, "0 replayed, 1 skipped, 0 failed")
    assert f"skipped {secret.id}" in out
    assert "--allow-redacted" in out

    code, out, _ = dlq("replay", "--yes", "--allow-redacted")
    assert (code, out.splitlines()[-1]) == (0, "1 replayed, 0 skipped, 0 failed")
    (message,) = queued(client)
    assert body(message)[1] == {"password": "***"}
    assert store.count() == 0


def test_stats_counts_by_task_and_reason(dlq: Run, store: RedisStreamStore) -> None:
    for _ in range(2):
        seed(store, "orders.charge", "permanent")
    seed(store, "orders.charge", "exhausted")
    seed(store, "emails.send", "permanent")

    code, out, err = dlq("stats")

    assert (code, err) == (0, "")
    assert out.splitlines()[:4] == [
        "task           reason     count",
        "orders.charge  permanent      2",
        "emails.send    permanent      1",
        "orders.charge  exhausted      1",
    ]
    code, out, _ = dlq("stats", "--format", "json", "--task", "orders.*")
    assert json.loads(out)["counts"] == [
        {"task": "orders.charge", "reason": "permanent", "count": 2},
        {"task": "orders.charge", "reason": "exhausted", "count": 1},
    ]
