"""The process fixtures themselves: a private redis-server and real celery workers."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.servers import RedisServer, RedisServerMissingError, WorkerProcess, find_redis_server, group_pids, is_alive


@pytest.fixture
def client_app(clean_redis: RedisServer) -> Iterator[Celery]:
    """A producer-side app on the private Redis that sends tasks by name."""
    app = Celery("smoke-client", broker=clean_redis.url, backend=clean_redis.url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    yield app
    app.close()


def test_shared_redis_is_private_and_not_on_the_default_port(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.port != 6379
    client = redis_server.client()
    assert client.ping()
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}


def test_missing_redis_binary_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(RedisServerMissingError, match=r"apt-get install -y redis-server.*\n?.*bootstrap\.sh"):
        find_redis_server()


def test_fixture_without_redis_binary_fails_and_never_skips(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_SERVER", "/nonexistent/redis-server")
    tests = Path(__file__).resolve().parents[1]
    pytester.makeconftest((tests / "conftest.py").read_text())
    support = pytester.mkpydir("support")
    (support / "servers.py").write_text((tests / "support" / "servers.py").read_text())
    pytester.makepyfile(
        test_needs_redis=(
            "def test_shared(redis_server):\n    pass\n\n"
            "def test_factory(redis_server_factory):\n    redis_server_factory()\n"
        ),
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(failed=1, errors=1, skipped=0)
    result.stdout.fnmatch_lines(
        [
            "*REDIS_SERVER=*/nonexistent/redis-server* is not an executable file*",
            "*apt-get install -y redis-server*bootstrap.sh*",
        ]
    )


@pytest.mark.parametrize(
    ("appendonly", "hard", "kept"),
    [
        pytest.param(False, False, False, id="no-aof-restart-loses-data"),
        pytest.param(True, False, True, id="aof-restart-keeps-data"),
        pytest.param(True, True, True, id="aof-kill9-keeps-data"),
    ],
)
def test_redis_restart_keeps_data_only_with_aof(
    redis_server_factory: Callable[..., RedisServer], appendonly: bool, hard: bool, kept: bool
) -> None:
    server = redis_server_factory(appendonly=appendonly)
    port = server.port
    client = server.client()
    client.set("order:1", "paid")
    client.rpush("queue", "a", "b")

    server.restart(hard=hard)

    assert server.port == port
    assert (client.get("order:1") == b"paid") is kept  # the old client reconnects on the same port
    assert client.llen("queue") == (2 if kept else 0)


def test_stopped_redis_refuses_connections_until_started(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    client = server.client(socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    server.stop()
    assert not server.running
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    server.start()
    assert client.ping()


@pytest.mark.worker
def test_solo_worker_runs_a_task_and_stops_warmly(
    clean_redis: RedisServer, client_app: Celery, celery_worker_process: Callable[..., WorkerProcess]
) -> None:
    queue = f"smoke-{uuid.uuid4().hex[:8]}"
    worker = celery_worker_process("plain_app", pool="solo", queues=[queue], broker_url=clean_redis.url)

    assert client_app.send_task("plain.add", args=(2, 3), queue=queue).get(timeout=30) == 5
    ran = client_app.send_task("plain.whoami", queue=queue).get(timeout=30)
    assert ran == {"pid": worker.pid, "hostname": worker.hostname}
    assert worker.children() == []
    worker.wait_for_log(r"Task plain\.add\[.*\] succeeded", timeout=10)

    assert worker.stop() == 0
    assert not worker.alive


@pytest.mark.worker
def test_prefork_worker_runs_tasks_in_children_and_kill_takes_the_whole_group(
    clean_redis: RedisServer, client_app: Celery, celery_worker_process: Callable[..., WorkerProcess]
) -> None:
    queue = f"smoke-{uuid.uuid4().hex[:8]}"
    worker = celery_worker_process(
        "plain_app", pool="prefork", concurrency=2, queues=[queue], broker_url=clean_redis.url
    )
    children = worker.wait_children(2)
    assert len(children) == 2

    assert client_app.send_task("plain.add", args=(20, 22), queue=queue).get(timeout=30) == 42
    ran = client_app.send_task("plain.whoami", queue=queue).get(timeout=30)
    assert ran["pid"] in children
    assert ran["pid"] != worker.pid

    worker.kill()
    assert worker.returncode == -signal.SIGKILL
    assert not any(is_alive(pid) for pid in children)
    assert group_pids(worker.pid) == []


@pytest.mark.worker
def test_worker_that_cannot_import_its_app_fails_with_its_log(
    tmp_path: os.PathLike[str], celery_worker_process: Callable[..., WorkerProcess], clean_redis: RedisServer
) -> None:
    worker = celery_worker_process("no_such_app_module", broker_url=clean_redis.url, start=False, ready_timeout=30)
    with pytest.raises(RuntimeError, match=r"exited with code \d+ before it was ready(.|\n)*no_such_app_module"):
        worker.start()
