"""``celery-policy dlq``: every reason a store writes can be filtered on, and a store that is down at a
terminal gives a message and exit 3, never a traceback."""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import get_args

import pytest
from support.servers import RedisServer

from celery_policy.cli import main
from celery_policy.cli.exit import CONNECT
from celery_policy.deadletter.record import DeadLetter, Reason
from celery_policy.deadletter.store import RedisStreamStore

STREAM = "dlq-bugs:dead"
CONSOLE_SCRIPT = Path(sys.executable).with_name("celery-policy")


def _record(reason: str) -> DeadLetter:
    return DeadLetter.model_validate(
        {
            "task": "orders.charge",
            "task_id": str(uuid.uuid4()),
            "reason": reason,
            "exc_type": "proj.errors.PaymentDeclined",
            "exc_message": "card declined",
            "first_failure": 1_700_000_000.0,
            "last_failure": 1_700_000_000.0,
        }
    )


def test_dlq_list_accepts_every_reason_a_store_writes_rejected_included(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The RabbitMQ store writes ``rejected`` records; ``--reason`` offers the same list as the record model."""
    store = RedisStreamStore(redis_server.url_for(3), STREAM)
    store.client.delete(STREAM)
    rejected = store.add(_record("rejected"))
    store.add(_record("permanent"))
    capsys.readouterr()

    code = main(["dlq", "list", "--url", redis_server.url_for(3), "--stream", STREAM, "--reason", "rejected"])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == [rejected]
    assert "rejected" in lines[0]
    assert "rejected" in get_args(Reason)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_at_terminal(argv: list[str], timeout_s: float = 60.0) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal; its exit code and everything it printed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    os.close(controller)
    try:
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def test_dlq_purge_at_a_terminal_with_the_store_down_says_so_and_exits_3(tmp_path: Path) -> None:
    """Counting the records to confirm is inside the same error handling as the purge itself."""
    url = f"redis://127.0.0.1:{_closed_port()}/0"

    code, out = _run_at_terminal([str(CONSOLE_SCRIPT), "dlq", "purge", "--url", url, "--stream", STREAM])

    assert "Traceback" not in out, out
    assert code == CONNECT, out
    assert out.startswith("error: "), out
    assert "127.0.0.1" in out
