"""A package that installs is a package that works: the built wheel, a bare virtualenv, real workers.

The wheel is built from this checkout and installed with plain ``pip install``
(no extras, no test dependencies) into a fresh virtualenv. That virtualenv's
own ``celery`` runs a worker under a small policy on a private Redis (reliable
fetch on by default: late ack on a redis:// broker) and on a private RabbitMQ
vhost, and one task of each kind goes through it: a transient error retried
with backoff until it succeeds, and a permanent error dead-lettered. The
virtualenv's own ``celery-policy dlq list`` reads the record back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _servers import RedisServer, WorkerProcess, running, wait_for
from celery import Celery
from rabbit_fixtures import RabbitVhost, rabbit_broker, rabbit_vhost  # noqa: F401

pytestmark = pytest.mark.worker

ROOT = Path(__file__).resolve().parents[2]
# Test-only packages that must not be in the bare install (pytest pulls in packaging, which once hid
# that kombu's Redis transport needs it).
TEST_ONLY = {"pytest", "hypothesis", "pytest-redis", "mirakuru", "django", "mypy", "nox"}

POLICY = """\
version: 1
errors:
  transient: [builtins.ConnectionError]
  permanent: [builtins.ValueError]
defaults:
  retry:
    on: [transient]
    never: [permanent]
    max_retries: 3
    backoff: {initial: 200ms, factor: 2, max: 1s, jitter: none}
  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 2}
  dead_letter: {enabled: true}
"""

APP = '''\
"""A user's app, as it would be written against the installed package."""
import os

import redis
from celery import Celery

import celery_policy

app = Celery("wheelapp", broker=os.environ["WHEEL_BROKER"], backend=os.environ["WHEEL_BACKEND"])
app.conf.broker_connection_retry_on_startup = True
celery_policy.install(app)
runs = redis.Redis.from_url(os.environ["WHEEL_BACKEND"])


@app.task(name="wheel.flaky", bind=True)
def flaky(self, key):
    if runs.incr(key) <= 2:
        raise ConnectionError("upstream timed out")
    return "done"


@app.task(name="wheel.bad")
def bad(amount):
    raise ValueError(f"invalid amount {amount}")
'''


class BareVenvWorker(WorkerProcess):
    """A worker run by the bare virtualenv's Python, not the test runner's."""

    def __init__(self, python: Path, *args: object, **kwargs: object) -> None:
        self.python = python
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _environment(self, extra: object, pythonpath: object) -> dict[str, str]:
        env = super()._environment(extra, pythonpath)  # type: ignore[arg-type]
        env["PYTHONPATH"] = str(self.cwd)  # the app only; nothing of the checkout or the test venv
        return env

    @property
    def command(self) -> list[str]:
        return [str(self.python), *super().command[1:]]


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the built wheel and what pip resolved for it; returns its python."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("celery_policy-*.whl")
    target = base / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    python = target / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        check=False, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return python


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelapp")
    (folder / "wheelapp.py").write_text(APP, encoding="utf-8")
    (folder / "policy.yaml").write_text(POLICY, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("wheel-redis")).start()
    yield server
    server.close()


def installed(python: Path) -> dict[str, str]:
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    ).stdout
    return {entry["name"].lower(): entry["version"] for entry in json.loads(listing)}


def test_the_bare_install_has_no_test_dependency_and_imports_the_redis_transport(bare_venv: Path) -> None:
    packages = installed(bare_venv)
    assert "celery-policy" in packages
    assert not TEST_ONLY & set(packages), sorted(TEST_ONLY & set(packages))
    probe = (
        "import kombu.transport.redis, celery_policy.transport.redis, celery_policy.support as s; "
        "print(s.reliable_fetch_problem())"
    )
    done = subprocess.run([str(bare_venv), "-c", probe], check=False, capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


def policy_worker(
    python: Path, app_dir: Path, broker_url: str, backend_url: str, log_path: Path
) -> tuple[WorkerProcess, Celery]:
    env = {
        "WHEEL_BROKER": broker_url,
        "WHEEL_BACKEND": backend_url,
        "CELERY_POLICY_FILE": str(app_dir / "policy.yaml"),
    }
    worker = BareVenvWorker(python, "wheelapp", log_path=log_path, pool="prefork", concurrency=1, cwd=app_dir, env=env)
    producer = Celery("producer", broker=broker_url, backend=backend_url)
    producer.conf.broker_connection_retry_on_startup = True
    return worker, producer


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_worker_from_the_bare_wheel_retries_dead_letters_and_lists_the_record(
    broker: str,
    bare_venv: Path,
    app_dir: Path,
    server: RedisServer,
    rabbit_vhost: RabbitVhost,  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    backend_url = server.url_for(1 if broker == "redis" else 2)
    broker_url = server.url if broker == "redis" else rabbit_vhost.url
    worker, producer = policy_worker(bare_venv, app_dir, broker_url, backend_url, tmp_path / "w.log")
    key = f"runs:{broker}"
    with running(worker, request.session):
        flaky = producer.send_task("wheel.flaky", args=(key,))
        bad = producer.send_task("wheel.bad", args=(42,))
        assert flaky.get(timeout=60) == "done"
        with pytest.raises(ValueError, match="invalid amount 42"):
            bad.get(timeout=30, propagate=True)
        if broker == "redis":
            # reliable fetch is on by default (late ack): this worker's consumer keeps a heartbeat on the broker
            alive = list(server.client().scan_iter("celery-policy:rf:alive:*"))
            assert alive, "no reliable-fetch consumer registered"
    producer.close()
    log = worker.log_text()

    assert int(redis.Redis.from_url(backend_url).get(key) or 0) == 3  # two transient failures, then success
    assert log.count("policy_decision") == 3, log  # retry, retry, dead_letter
    # the default store: the Redis broker's stream, or the RabbitMQ broker's dead queues
    listed = wait_for("the dead letter to be listed", lambda: _dlq_list(bare_venv, broker_url, app_dir) or None, 20)
    (record,) = [r for r in listed if r["task_id"] == bad.id]
    assert (record["task"], record["reason"], record["exc_type"]) == ("wheel.bad", "permanent", "builtins.ValueError")


def _dlq_list(python: Path, store_url: str, cwd: Path) -> list[dict[str, object]]:
    celery_policy = python.parent / "celery-policy"
    done = subprocess.run(
        [str(celery_policy), "dlq", "list", "--url", store_url, "--format", "json"],
        check=False, capture_output=True, text=True, cwd=cwd, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return list(json.loads(done.stdout)["records"]) if done.stdout.strip() else []
