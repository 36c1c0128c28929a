"""`celery-policy breakers` and `status` on a real redis-server (and real workers for status)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from support.servers import REPO_ROOT, RedisServer

from celery_policy.cli import main
from celery_policy.cli.exit import CONNECT, FAILED, OK, USAGE
from celery_policy.flow.state import Breaker
from celery_policy.model import BreakerSettings

FLOW_POLICY = REPO_ROOT / "tests" / "support" / "apps" / "flow" / "policy.yaml"


def _policy(tmp_path: Path, url: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\n"
        "breakers:\n"
        "  payments: {on: [builtins.ConnectionError], min_calls: 2, open_for: 30s}\n"
        "  search: {on: [builtins.TimeoutError]}\n"
        f"flow_store: {{url: '{url}', prefix: cli}}\n"
        "tasks:\n"
        "  shop.charge: {breaker: payments}\n"
        "  shop.find: {breaker: search}\n"
    )
    return str(path)


def test_breakers_lists_state_failure_rate_and_since(
    clean_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path, clean_redis.url)
    worker_view = Breaker("payments", BreakerSettings(min_calls=2, open_for=30.0), clean_redis.client(), "cli", 1.0)
    worker_view.admit()
    worker_view.failed()
    worker_view.admit()
    worker_view.failed()  # 2 of 2 calls failed: open
    assert main(["breakers", "--file", policy]) == OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("payments  open       failure rate 100%  since ")
    assert "half-open in " in out[0]
    assert out[1] == "search    closed     failure rate -  never changed"
    assert main(["breakers", "--file", policy, "--format", "json"]) == OK
    data = json.loads(capsys.readouterr().out)
    assert [(b["name"], b["state"], b["failure_rate"]) for b in data["breakers"]] == [
        ("payments", "open", 1.0),
        ("search", "closed", None),
    ]


def test_breakers_open_and_close_force_the_shared_state_and_are_audited(
    clean_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path, clean_redis.url)
    assert main(["breakers", "--file", policy, "open", "search", "--reason", "search cluster rebuild"]) == OK
    captured = capsys.readouterr()
    assert captured.out.startswith("breaker search forced open: tasks using it are snoozed until 'breakers close'")
    logged = [json.loads(line) for line in captured.err.splitlines() if "breaker_forced" in line]
    assert [(e["breaker"], e["state"], e["was"], e["reason"]) for e in logged] == [
        ("search", "open", "closed", "search cluster rebuild")
    ]
    worker_view = Breaker("search", BreakerSettings(), clean_redis.client(), "cli", 1.0)
    assert isinstance(worker_view.admit(), float)  # a worker now snoozes tasks that use it
    assert main(["breakers", "--file", policy, "close", "search"]) == OK
    capsys.readouterr()
    assert Breaker("search", BreakerSettings(), clean_redis.client(), "cli", 1.0).admit() is None
    audit = [json.loads(raw) for raw in clean_redis.client().lrange("cli:audit", 0, -1)]
    assert [(a["breaker"], a["state"], a["was"]) for a in audit] == [
        ("search", "closed", "open"),
        ("search", "open", "closed"),
    ]


def test_breakers_open_of_an_unknown_name_fails_and_a_dead_redis_is_exit_3(
    redis_server_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = redis_server_factory()
    policy = _policy(tmp_path, server.url)
    assert main(["breakers", "--file", policy, "open", "payment"]) == FAILED
    assert "unknown breaker 'payment' (known: payments, search)" in capsys.readouterr().err
    server.stop()
    assert main(["breakers", "--file", policy]) == CONNECT
    assert "cannot read breaker state" in capsys.readouterr().err
    assert main(["breakers", "--file", str(tmp_path / "missing.yaml")]) == USAGE


@pytest.mark.worker
def test_status_shows_breaker_states_next_to_the_fleet(
    clean_redis: RedisServer,
    celery_worker_process: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "CELERY_POLICY_FILE": str(FLOW_POLICY),
        "FLOW_JOURNAL_URL": clean_redis.url,
        "CELERY_BROKER_URL": clean_redis.url,
        "CELERY_RESULT_BACKEND": clean_redis.url,
    }
    celery_worker_process("tests.support.apps.flow.flowapp", hostname="w1@flow", env=env, cwd=REPO_ROOT)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    sys.modules.pop("tests.support.apps.flow.flowapp", None)
    Breaker("payments", BreakerSettings(), clean_redis.client(), "celery-policy:flow", 1.0).force("open")
    assert main(["status", "--app", "tests.support.apps.flow.flowapp", "--timeout", "2"]) == OK
    out = capsys.readouterr().out
    assert "1 worker, 1 policy" in out
    tail = out[out.index("breakers:") :].splitlines()
    assert tail[1].startswith("  payments  open       failure rate -  since ")
    assert tail[1].endswith("forced open (breakers close to end it)")
