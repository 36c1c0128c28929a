"""Shared fixtures: a private Redis and real Celery worker processes.

Redis
  ``redis_server``          session-scoped shared server; do not stop it (use the factory for that)
  ``clean_redis``           the shared server, flushed (FLUSHALL: every database) before the test;
                            a module that keeps a module-scoped worker on ``redis_server.url_for(db)``
                            must not also use ``clean_redis``
  ``redis_server_factory``  ``(*, appendonly=False, save="", port=None, start=True) -> RedisServer``,
                            private servers a test may stop / kill / restart; closed at teardown

Celery workers
  ``celery_worker_process`` ``(app, *, pool="solo", concurrency=1, hostname=None, queues=None,
                            broker_url=None, env=None, cwd=None, pythonpath=(), loglevel="INFO",
                            extra_args=(), ready_timeout=60, start=True) -> WorkerProcess``
                            starts ``celery -A app worker`` (cwd defaults to tests/support/apps/plain); every
                            worker is killed (process group) at teardown and its log is
                            printed when the test failed

A missing ``redis-server`` binary fails the test with the install command; it is never skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The repository root too, so ``tests.support.apps.*`` (the test apps, as workers import them) imports in-process
# whichever test module runs first.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from support.servers import (  # noqa: E402
    ProcessStartError,
    RedisServer,
    RedisServerMissingError,
    WorkerProcess,
    kill_all_workers,
)


def _start_redis(datadir: Path, **kwargs: Any) -> RedisServer:
    try:
        return RedisServer(datadir, **kwargs).start()
    except RedisServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    except ProcessStartError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the whole session (no persistence). Tests must not stop it."""
    server = _start_redis(tmp_path_factory.mktemp("redis-shared"))
    yield server
    server.close()


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> RedisServer:
    """The shared server, restarted if a test stopped it, with every database flushed."""
    if not redis_server.running:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server


RedisServerFactory = Callable[..., RedisServer]


@pytest.fixture
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerFactory]:
    """Make private servers for fault injection (stop, kill, restart); all are closed at teardown."""
    servers: list[RedisServer] = []

    def make(*, appendonly: bool = False, save: str = "", port: int | None = None, start: bool = True) -> RedisServer:
        datadir = tmp_path_factory.mktemp("redis")
        if start:
            server = _start_redis(datadir, appendonly=appendonly, save=save, port=port)
        else:
            try:
                server = RedisServer(datadir, appendonly=appendonly, save=save, port=port)
            except RedisServerMissingError as exc:
                pytest.fail(str(exc), pytrace=False)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def celery_worker_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real ``celery worker`` subprocesses; each one's process group is killed at teardown."""
    workers: list[WorkerProcess] = []

    def start_worker(
        app: str,
        *,
        pool: str = "solo",
        concurrency: int = 1,
        hostname: str | None = None,
        queues: Iterable[str] | None = None,
        broker_url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        pythonpath: Iterable[str | Path] = (),
        loglevel: str = "INFO",
        extra_args: Sequence[str] = (),
        ready_timeout: float = 60.0,
        start: bool = True,
    ) -> WorkerProcess:
        environment: dict[str, str] = {}
        if broker_url is not None:
            # Celery reads both from the environment when the app does not set them.
            environment["CELERY_BROKER_URL"] = broker_url
            environment["CELERY_RESULT_BACKEND"] = broker_url
        environment.update(env or {})
        worker = WorkerProcess(
            app,
            log_path=tmp_path / f"worker-{len(workers) + 1}.log",
            pool=pool,
            concurrency=concurrency,
            hostname=hostname,
            queues=queues,
            env=environment,
            cwd=cwd,
            pythonpath=pythonpath,
            loglevel=loglevel,
            extra_args=extra_args,
            ready_timeout=ready_timeout,
        )
        workers.append(worker)
        if start:
            try:
                worker.start()
            except ProcessStartError as exc:
                pytest.fail(str(exc), pytrace=False)
        return worker

    yield start_worker

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for worker in workers:
        # SIGKILL, not a warm shutdown: the test is over, and a warm one waits for running tasks.
        worker.kill()
        if failed:
            sys.stderr.write(f"\n--- {worker!r}: {worker.log_path} ---\n{worker.log_text()[-20000:]}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Lets fixtures see at teardown whether the test body failed (to print worker logs).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Safety net: no worker process group may outlive the test run.
    kill_all_workers()
