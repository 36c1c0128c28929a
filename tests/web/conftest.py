"""Module fixtures of the console tests: a prefork worker of the dead-letter app and a ``celery-policy web`` process.

Both use one database of the session's Redis; the worker produces the dead
letters the console shows, and runs the tasks the console replays.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from support.console import Console, console_env
from support.harness import DEADLETTER_POLICY, DL_STREAM, DLAPP, deadletter_worker, producer
from support.servers import RedisServer, WorkerProcess, running

from celery_policy.deadletter.store import RedisStreamStore

DB = 9


@pytest.fixture(scope="module")
def broker_url(redis_server: RedisServer) -> str:
    redis_server.client(DB).flushdb()
    return redis_server.url_for(DB)


@pytest.fixture(scope="module")
def worker(
    broker_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    process = deadletter_worker(
        tmp_path_factory.mktemp("web-worker"), broker_url=broker_url, pool="prefork", concurrency=1
    )
    with running(process, request.session) as started:
        yield started


@pytest.fixture(scope="module")
def console(
    broker_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Console]:
    log = tmp_path_factory.mktemp("web-console") / "console.log"
    process = Console(["--app", DLAPP], console_env(broker_url, DEADLETTER_POLICY), log).start()
    failed_before = request.session.testsfailed
    try:
        yield process
    finally:
        process.stop()
        if request.session.testsfailed > failed_before:
            print(f"\n--- celery-policy web log ---\n{process.log_text()[-20000:]}")


@pytest.fixture(scope="module")
def app(broker_url: str) -> Celery:
    return producer(broker_url)


@pytest.fixture(scope="module")
def store(broker_url: str) -> RedisStreamStore:
    return RedisStreamStore(broker_url, DL_STREAM)


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client(DB)
