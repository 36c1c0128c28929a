"""RabbitMQ for the tests: the broker on 127.0.0.1:5672 (guest/guest), a private vhost per test session.

``rabbit_vhost`` (session) makes sure a broker answers on 5672 (starting
``rabbitmq-server -detached`` when nothing does, and waiting for it), creates a
vhost with a unique name with ``rabbitmqctl add_vhost`` (the tests never see
data of anyone else, and queues of an earlier run cannot conflict), and deletes
it at the end. When no broker can be had, the test fails with what to do; it is
never skipped.

``fresh_vhost`` does the same for a single test. Import the fixtures in a test module:
``from support.rabbit import fresh_vhost, rabbit_broker, rabbit_vhost  # noqa: F401``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

HOST, PORT = "127.0.0.1", 5672
INSTALL_HINT = (
    "the RabbitMQ tests need a broker on 127.0.0.1:5672 (guest/guest) and rabbitmqctl:\n"
    "  apt-get install -y rabbitmq-server && rabbitmq-server -detached"
)


@dataclass(frozen=True)
class RabbitVhost:
    name: str

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{PORT}/{self.name}"


def _answers(timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=timeout_s):
            return True
    except OSError:
        return False


def _ctl(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    return subprocess.run([ctl, *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def queue_messages(vhost: str, queue: str) -> int:
    """Messages in ``queue`` of ``vhost``, ready plus delivered-and-unacknowledged (0 when it does not exist)."""
    done = _ctl("list_queues", "-p", vhost, "name", "messages", "--no-table-headers", "--quiet")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == queue:
            return int(fields[1])
    return 0


def ensure_broker(wait_s: float = 90.0) -> None:
    """A broker answers on 5672 (and rabbitmqctl reaches it), else ``pytest.fail`` with the fix."""
    if not _answers():
        server = shutil.which("rabbitmq-server") or (
            "/usr/sbin/rabbitmq-server" if shutil.which("rabbitmqctl") else None
        )
        if server is None:
            pytest.fail(
                f"nothing answers on {HOST}:{PORT} and rabbitmq-server is not installed\n{INSTALL_HINT}", pytrace=False
            )
        started = subprocess.run([server, "-detached"], capture_output=True, text=True, timeout=60, check=False)
        deadline = time.monotonic() + wait_s
        while not _answers() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not _answers():
            pytest.fail(
                f"rabbitmq-server -detached (exit {started.returncode}) did not answer on {HOST}:{PORT} "
                f"within {wait_s:.0f}s: {started.stderr.strip()[-500:]}\n{INSTALL_HINT}",
                pytrace=False,
            )
    waited = _ctl("await_startup", timeout_s=wait_s)
    if waited.returncode != 0:
        pytest.fail(f"rabbitmqctl await_startup failed: {waited.stderr.strip()[-500:]}\n{INSTALL_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def rabbit_broker() -> None:
    """A broker answers on 127.0.0.1:5672 (started if needed), once per session."""
    ensure_broker()


@pytest.fixture(scope="session")
def rabbit_vhost(rabbit_broker: None) -> Iterator[RabbitVhost]:
    """A fresh vhost for this session (guest has all permissions on it); deleted at the end."""
    yield from _vhost()


@pytest.fixture
def fresh_vhost(rabbit_broker: None) -> Iterator[RabbitVhost]:
    """A fresh vhost for one test (a vhost costs about a second), so queues of other tests never conflict."""
    yield from _vhost()


def _vhost() -> Iterator[RabbitVhost]:
    vhost = RabbitVhost(f"celery-policy-test-{uuid.uuid4().hex[:10]}")
    for args in (("add_vhost", vhost.name), ("set_permissions", "-p", vhost.name, "guest", ".*", ".*", ".*")):
        done = _ctl(*args)
        if done.returncode != 0:
            pytest.fail(
                f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()[-500:]}\n{INSTALL_HINT}", pytrace=False
            )
    yield vhost
    _ctl("delete_vhost", vhost.name)
