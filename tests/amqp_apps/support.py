"""Helpers of the RabbitMQ tests: a worker of ``brokerapp`` on either broker, the run journal, the dlq CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from _servers import WorkerProcess, wait_for  # noqa: F401 - wait_for is re-exported for the tests

from celery_policy.support import celery_consumes_quorum_queues

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY = REPO_ROOT / "tests" / "amqp_apps" / "policy.yaml"
APP = "tests.amqp_apps.brokerapp"


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def worker_env(broker_url: str, journal_url: str, policy: Path = POLICY) -> dict[str, str]:
    return {
        "CP_BROKER_URL": broker_url,
        "CP_JOURNAL_URL": journal_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_POLICY_FILE": str(policy),
    }


def make_worker(
    log_dir: Path, *, broker_url: str, journal_url: str, policy: Path = POLICY, pool: str = "prefork",
    hostname: str | None = None, queues: Sequence[str] | None = None,
) -> WorkerProcess:  # fmt: skip
    """A (not yet started) worker of ``brokerapp`` with ``policy`` as CELERY_POLICY_FILE."""
    return WorkerProcess(
        APP,
        log_path=log_dir / f"worker-{uuid.uuid4().hex[:6]}.log",
        pool=pool,
        concurrency=1,
        hostname=hostname,
        queues=queues,
        env=worker_env(broker_url, journal_url, policy),
        cwd=REPO_ROOT,
        pythonpath=(REPO_ROOT,),
        ready_timeout=60,
    )


def runs(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(f"cp:runs:{key}", 0, -1)]


def amqp_message_count(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (0 when it does not exist)."""
    from kombu.connection import Connection

    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        except Exception as exc:
            if getattr(exc, "reply_code", None) == 404:
                return 0
            raise


# tests/amqp_apps/policy.yaml routes to a quorum queue, which workers before Celery 5.5 cannot consume from:
# there such a worker stops at boot (test_amqp_runtime.py::test_a_quorum_queue_policy_...).
QUORUM_REASON = "quorum queues need Celery 5.5+; on older Celery the boot refusal is tested instead"
needs_quorum_queues = pytest.mark.skipif(not celery_consumes_quorum_queues(), reason=QUORUM_REASON)
