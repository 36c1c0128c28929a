"""Dead letters written by real workers: one record per reason, with every field, and none when disabled.

One private redis-server is broker, result backend and (by default, the broker
URL) dead-letter store for this module. A solo worker serves ``dl-solo``; a
prefork worker serves ``dl-prefork`` for the hard time limit and the poison
pill, which need a pool child to kill.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, chord, group
from celery.exceptions import ChordError, Reject
from support.harness import (
    DL_STREAM,
    deadletter_worker,
    deliveries_once_drained,
    dl_runs,
    log_events,
    new_key,
    producer,
    records_for,
    wait_final,
    wait_record,
)
from support.servers import RedisServer, WorkerProcess, running, wait_for

from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.store import Filter, RedisStreamStore

pytestmark = pytest.mark.worker

SOLO, PREFORK = "dl-solo", "dl-prefork"
POLICY_LINE = re.compile(r"^tests/support/apps/deadletter/deadletter\.yaml:\d+ \(|/deadletter\.yaml:\d+ \(")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("dl-redis")).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def solo(
    server: RedisServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    worker = deadletter_worker(tmp_path_factory.mktemp("dl-solo"), broker_url=server.url, queues=[SOLO], name="solo")
    with running(worker, request.session):
        yield worker


@pytest.fixture(scope="module")
def prefork(
    server: RedisServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    log_dir = tmp_path_factory.mktemp("dl-prefork")
    worker = deadletter_worker(
        log_dir, broker_url=server.url, pool="prefork", concurrency=2, queues=[PREFORK], name="prefork"
    )
    with running(worker, request.session):
        yield worker


@pytest.fixture(scope="module")
def client(server: RedisServer) -> redis.Redis:
    return server.client()


@pytest.fixture(scope="module")
def store(server: RedisServer) -> RedisStreamStore:
    return RedisStreamStore(server.url, DL_STREAM)  # the worker derives the same URL from its Redis broker


@pytest.fixture(scope="module")
def app(server: RedisServer) -> Iterator[Celery]:
    app = producer(server.url)
    yield app
    app.close()


def assert_common_fields(record: DeadLetter, worker: WorkerProcess, queue: str, task_id: str) -> None:
    assert record.task_id == task_id
    assert record.hostname == worker.hostname
    assert record.queue == queue
    assert POLICY_LINE.search(record.policy_source), record.policy_source
    assert record.first_failure <= record.last_failure <= time.time()
    assert record.id is not None


# Every record this module's tests waited for, by task id: the stream-wide check below compares against it.
RECORDED: dict[str, str] = {}


def _wait_record(store: RedisStreamStore, task_id: str, timeout: float = 20.0) -> DeadLetter:
    record = wait_record(store, task_id, timeout)
    RECORDED[task_id] = record.reason
    return record


def wait_both_failure_paths(worker: WorkerProcess, task_id: str) -> None:
    """Wait until both of Celery's reports of one hard time limit have run, instead of sleeping.

    ``Request.on_timeout`` logs "Hard time limit ...", calls ``on_failure`` (which writes the record,
    then logs the policy decision) and sends ``task_failure``; the pool's error callback sends
    ``task_failure`` again and then logs "Task handler raised error: TimeLimitExceeded". Every hard limit
    of this module's worker gives one of each line, so once the counts match and this task's decision
    is logged, both reports are done.
    """

    def seen() -> bool:
        log = worker.log_text()
        limits = len(re.findall(r"Hard time limit \(\S+\) exceeded for ", log))
        handled = log.count("Task handler raised error: TimeLimitExceeded")
        decided = bool(log_events(log, "policy_decision", task_id=task_id))
        return decided and f"[{task_id}]" in log and handled >= limits

    wait_for(f"both failure reports of {task_id}", seen, timeout=20)


def test_exhausted_retries_write_one_record_with_every_field(
    solo: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("exhausted")
    sent = time.time()
    task_id = app.send_task("dl.transient", args=(key,), kwargs={"order": {"id": 5, "items": [1, 2]}}, queue=SOLO).id

    record = _wait_record(store, task_id)

    executions = dl_runs(client, key)
    assert len(executions) == 3  # max_retries 2: the first run and two retries
    assert (record.task, record.reason, record.attempts) == ("dl.transient", "exhausted", 3)
    assert (record.args, record.kwargs, record.replayable) == ([key], {"order": {"id": 5, "items": [1, 2]}}, True)
    assert record.exc_type == "tests.support.apps.deadletter.dlapp.Transient"
    assert record.exc_message == "gateway timeout on run 3"
    assert "Traceback (most recent call last)" in record.traceback
    assert 'dlapp.py", line' in record.traceback
    assert "Transient: gateway timeout on run 3" in record.traceback
    assert_common_fields(record, solo, SOLO, task_id)
    # first failure: the first run; last failure: the third
    assert sent <= record.first_failure <= executions[0]["t"] + 1
    assert record.first_failure < executions[1]["t"]
    assert executions[2]["t"] <= record.last_failure
    assert "deadletter.yaml:10 (defaults)" in record.policy_source  # retry.on, the rule that ran out
    assert wait_final(client, task_id)["status"] == "FAILURE"
    assert records_for(store, task_id) == [record]


def test_a_permanent_error_writes_one_record_on_the_first_attempt(
    solo: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("permanent")
    task_id = app.send_task("dl.permanent", args=(key,), kwargs={"amount": -5}, queue=SOLO).id

    record = _wait_record(store, task_id)

    assert len(dl_runs(client, key)) == 1
    assert (record.task, record.reason, record.attempts) == ("dl.permanent", "permanent", 1)
    assert (record.args, record.kwargs) == ([key], {"amount": -5})
    assert (record.exc_type, record.exc_message) == (
        "tests.support.apps.deadletter.dlapp.Permanent",
        "invalid amount -5",
    )
    assert "Permanent: invalid amount -5" in record.traceback
    assert record.first_failure == pytest.approx(record.last_failure, abs=0.5)
    assert "deadletter.yaml:11 (defaults)" in record.policy_source  # retry.never
    assert_common_fields(record, solo, SOLO, task_id)
    assert wait_final(client, task_id)["status"] == "FAILURE"
    events = log_events(solo.log_text(), "policy_decision", task_id=task_id)
    assert [(e["decision"], e["reason"]) for e in events] == [("dead_letter", "permanent")]


def test_unknown_errors_that_run_out_of_retries_write_unknown_exhausted(
    solo: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("unknown")
    task_id = app.send_task("dl.unknown", args=(key,), queue=SOLO).id

    record = _wait_record(store, task_id)

    assert len(dl_runs(client, key)) == 2  # unknown_max_retries 1
    assert (record.reason, record.attempts) == ("unknown_exhausted", 2)
    assert record.exc_type == "tests.support.apps.deadletter.dlapp.Flaky"
    assert "deadletter.yaml:20" in record.policy_source  # tasks."dl.unknown" retry
    assert_common_fields(record, solo, SOLO, task_id)


def test_a_task_without_dead_letters_enabled_writes_nothing(
    solo: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("nodl")
    before = store.count()
    task_id = app.send_task("dl.nodl", args=(key,), queue=SOLO).id

    meta = wait_final(client, task_id)  # the record, if any, is written before the result is stored

    assert meta["status"] == "FAILURE"
    assert len(dl_runs(client, key)) == 1
    assert records_for(store, task_id) == []
    assert store.count() == before
    events = log_events(solo.log_text(), "policy_decision", task_id=task_id)
    assert [(e["decision"], e["reason"]) for e in events] == [("fail", "permanent")]


def test_redacted_secrets_never_reach_the_store_from_a_worker(
    solo: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("secret")
    password, token = "hunter2-b7f1", "tok-5d0c9e"
    task_id = app.send_task(
        "dl.secret", args=(key,), kwargs={"password": password, "profile": {"name": "ann", "token": token}}, queue=SOLO
    ).id

    record = _wait_record(store, task_id)

    assert record.kwargs == {"password": "***", "profile": {"name": "ann", "token": "***"}}
    assert record.replayable is False
    rows: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(DL_STREAM)  # type: ignore[assignment]
    raw = b"".join(b"".join(fields.values()) for _, fields in rows)
    assert password.encode() not in raw
    assert token.encode() not in raw
    log = solo.log_text()  # the decision log is redacted the same way
    assert password not in log
    assert token not in log


def test_a_hard_time_limit_writes_a_time_limit_record(
    prefork: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("slow")
    link = app.signature("dl.add", args=(1,))
    task_id = app.send_task("dl.slow", args=(key, 30), queue=PREFORK, link=link, headers={"tenant": "acme"}).id

    record = _wait_record(store, task_id, timeout=15)

    assert len(dl_runs(client, key)) == 1
    assert (record.task, record.reason, record.attempts) == ("dl.slow", "time_limit", 1)
    # written in the worker's main process, from the message: the canvas and headers are kept there too
    assert ([s["task"] for s in record.callbacks], record.root_id) == (["dl.add"], task_id)
    assert record.headers.get("tenant") == "acme"
    assert record.exc_type == "billiard.exceptions.TimeLimitExceeded"  # what celery.exceptions re-exports
    assert "TimeLimitExceeded" in record.traceback
    assert (record.args, record.kwargs, record.replayable) == ([key, 30], {}, True)
    assert "deadletter.yaml:22" in record.policy_source  # timeout.hard of tasks."dl.slow"
    assert_common_fields(record, prefork, PREFORK, task_id)
    assert wait_final(client, task_id)["status"] == "FAILURE"
    wait_both_failure_paths(prefork, task_id)  # task_failure fires twice for one hard limit; the record must not
    assert len(records_for(store, task_id)) == 1


def test_a_hard_time_limit_writes_no_record_when_on_time_limit_is_off(
    prefork: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("slow-no-record")
    task_id = app.send_task("dl.slow_no_record", args=(key, 30), queue=PREFORK).id

    assert wait_final(client, task_id)["status"] == "FAILURE"
    prefork.wait_for_log(rf'"decision": "fail".*"task_id": "{task_id}".*"reason": "time_limit"', timeout=10)
    wait_both_failure_paths(prefork, task_id)
    assert records_for(store, task_id) == []


def test_a_hard_time_limit_on_a_retry_counts_the_attempts_and_keeps_the_first_failure_time(
    prefork: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("slow-retry")
    task_id = app.send_task("dl.slow", args=(key, 30), kwargs={"fail_runs": 1}, queue=PREFORK).id

    record = _wait_record(store, task_id, timeout=15)

    executions = dl_runs(client, key)
    assert [e["retries"] for e in executions] == [0, 1]
    assert (record.reason, record.attempts) == ("time_limit", 2)
    assert record.first_failure == pytest.approx(executions[0]["t"], abs=0.5)
    assert record.last_failure >= executions[1]["t"] + 0.9  # killed about one hard limit (1 s) after the run started
    assert_common_fields(record, prefork, PREFORK, task_id)


def test_a_poison_pill_runs_max_redeliveries_plus_one_times_then_is_dead_lettered(
    prefork: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    key = new_key("crash")
    task_id = app.send_task("dl.crash", args=(key,), queue=PREFORK).id

    record = _wait_record(store, task_id, timeout=40)

    executions = dl_runs(client, key)
    # On failure, say which run came from where: a second run with redelivered False would be the pool
    # sending the same job to another child (billiard's put-back of a job whose ACK it had not read).
    evidence = (executions, [line for line in prefork.log_text().splitlines() if task_id in line][-12:])
    assert len(executions) == 3, evidence  # max_redeliveries 2: the first delivery and two redeliveries
    assert [e["redelivered"] for e in executions] == [False, True, True], evidence
    assert len({e["pid"] for e in executions}) == 3  # each run killed its pool process
    assert (record.task, record.reason, record.attempts) == ("dl.crash", "redelivery_limit", 1)
    assert record.exc_message == "message redelivered 3 times after lost workers (max_redeliveries=2)"
    assert (record.args, record.replayable) == ([key], True)
    assert "deadletter.yaml:24" in record.policy_source  # ack.max_redeliveries of tasks."dl.crash"
    assert_common_fields(record, prefork, PREFORK, task_id)
    assert int(client.get(f"celery-policy:dlv:{{{task_id}}}:0") or 0) == 3
    assert 0 < client.ttl(f"celery-policy:dlv:{{{task_id}}}:0") <= 7 * 86400

    meta = wait_final(client, task_id)
    assert meta["status"] == "FAILURE"
    assert "max_redeliveries=2" in str(meta["result"])
    # nothing runs it again: no copy is left in the broker, and each delivery was logged before it left
    assert deliveries_once_drained(prefork, client, task_id, queues=(PREFORK,)) == [4]  # the 4th was stopped
    assert len(dl_runs(client, key)) == 3
    assert len(records_for(store, task_id)) == 1
    # the worker keeps serving other tasks
    assert app.send_task("dl.add", args=(2, 3), queue=PREFORK).get(timeout=20) == 5


def test_the_stream_holds_exactly_the_records_written_above(
    solo: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    """One record per dead-lettered task of this module, each with its reason; no duplicate, nothing else.

    It dead-letters a task of its own first, so it checks something when it runs alone too.
    """
    task_id = app.send_task("dl.permanent", args=(new_key("stream"),), kwargs={"amount": -1}, queue=SOLO).id
    _wait_record(store, task_id)
    by_task = Counter(str(found.task_id) for found in store.iter(Filter()))
    assert by_task == dict.fromkeys(RECORDED, 1)  # one record per task, none that no test waited for
    reasons = {str(found.task_id): found.reason for found in store.iter(Filter())}
    assert reasons == RECORDED


def test_a_chord_whose_header_holds_a_poison_pill_fails_instead_of_hanging(
    prefork: WorkerProcess, app: Celery, client: redis.Redis, store: RedisStreamStore
) -> None:
    """After the redelivery cap the header task is FAILURE on every Celery line, so the chord errors out.

    Celery < 5.7 leaves a task that raised ``Reject(requeue=False)`` PENDING; the runtime stores the failure.
    """
    key = new_key("chord-crash")
    crash = app.signature("dl.crash", args=(key,), queue=PREFORK)
    header = group(crash, app.signature("dl.add", args=(1, 2), queue=PREFORK))
    result = chord(header)(app.signature("dl.total", queue=PREFORK))

    # Celery's backends word the chord's failure differently by release: a ChordError naming the header
    # task, or the header task's own exception
    with pytest.raises((ChordError, Reject)) as failed:
        result.get(timeout=60)

    assert "max_redeliveries=2" in str(failed.value)
    crashed_id = result.parent.results[0].id
    assert len(dl_runs(client, key)) == 3
    assert [r.reason for r in records_for(store, crashed_id)] == ["redelivery_limit"]
    assert wait_final(client, crashed_id)["status"] == "FAILURE"
