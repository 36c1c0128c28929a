"""Idempotency keys with real workers: duplicates never run the body twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "tests" / "support" / "apps" / "idem" / "policy.yaml"

pytestmark = pytest.mark.worker


def _app_env(url: str) -> dict[str, str]:
    return {"CELERY_BROKER_URL": url, "CELERY_POLICY_FILE": str(POLICY)}


@pytest.fixture
def idemapp(clean_redis: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in _app_env(clean_redis.url).items():
        monkeypatch.setenv(key, value)
    import importlib
    import sys

    sys.modules.pop("tests.support.apps.idem.idemapp", None)
    return importlib.import_module("tests.support.apps.idem.idemapp")


def test_concurrent_duplicates_run_the_body_once_and_share_the_result(
    idemapp: Any, clean_redis: Any, celery_worker_process: Any
) -> None:
    celery_worker_process(
        "tests.support.apps.idem.idemapp", pool="prefork", concurrency=2, cwd=ROOT, env=_app_env(clean_redis.url)
    )
    results = [idemapp.charge.delay(order_id="o-1", amount=5) for _ in range(4)]
    assert [r.get(timeout=30) for r in results] == [{"charged": 5}] * 4
    assert int(clean_redis.client().get("runs:o-1")) == 1
    # a later duplicate with other arguments still returns the stored result of the first run
    assert idemapp.charge.delay(order_id="o-1", amount=9).get(timeout=15) == {"charged": 5}
    assert int(clean_redis.client().get("runs:o-1")) == 1


def test_skip_mode_returns_a_duplicate_marker(idemapp: Any, clean_redis: Any, celery_worker_process: Any) -> None:
    celery_worker_process("tests.support.apps.idem.idemapp", cwd=ROOT, env=_app_env(clean_redis.url))
    assert idemapp.notify.delay("ann").get(timeout=15) == "sent to ann"
    second = idemapp.notify.delay("ann").get(timeout=15)
    assert second == {"status": "duplicate", "key": "notify:ann"}
    assert int(clean_redis.client().get("runs:ann")) == 1


def test_different_keys_both_run(idemapp: Any, clean_redis: Any, celery_worker_process: Any) -> None:
    celery_worker_process("tests.support.apps.idem.idemapp", cwd=ROOT, env=_app_env(clean_redis.url))
    assert idemapp.charge.delay(order_id="a", amount=1, sleep_s=0).get(timeout=15) == {"charged": 1}
    assert idemapp.charge.delay(order_id="b", amount=2, sleep_s=0).get(timeout=15) == {"charged": 2}
    client = clean_redis.client()
    assert (int(client.get("runs:a")), int(client.get("runs:b"))) == (1, 1)


def test_store_down_retries_instead_of_running_unguarded(
    redis_server_factory: Any,
    clean_redis: Any,
    celery_worker_process: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keys live in a separate Redis; while it is down the task is retried per its policy, never run."""
    store = redis_server_factory()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text() + f"dead_letter_store: {{url: '{store.url}'}}\n")
    env = {"CELERY_BROKER_URL": clean_redis.url, "CELERY_POLICY_FILE": str(policy)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import importlib
    import sys

    sys.modules.pop("tests.support.apps.idem.idemapp", None)
    app = importlib.import_module("tests.support.apps.idem.idemapp")
    worker = celery_worker_process("tests.support.apps.idem.idemapp", cwd=ROOT, env=env)
    store.stop()
    result = app.charge.delay(order_id="o-9", amount=3, sleep_s=0)
    worker.wait_for_log("idempotency_store_unavailable", timeout=20, count=2)
    assert clean_redis.client().get("runs:o-9") is None  # never ran without its guard
    store.start()
    assert result.get(timeout=30) == {"charged": 3}
    assert int(clean_redis.client().get("runs:o-9")) == 1
    done_key = "celery-policy:idem:{charge:o-9}:done"
    wait_for("the done record", lambda: store.client().exists(done_key) == 1, timeout=10)


def test_arguments_that_cannot_form_the_key_fail_at_once_without_running(
    idemapp: Any, clean_redis: Any, celery_worker_process: Any
) -> None:
    """`charge:{kwargs[order_id]}` with order_id passed positionally: a permanent failure, no retry, no run."""
    worker = celery_worker_process("tests.support.apps.idem.idemapp", cwd=ROOT, env=_app_env(clean_redis.url))
    result = idemapp.charge.apply_async(args=("o-77", 5))
    with pytest.raises(Exception, match="cannot be formatted"):
        result.get(timeout=15)
    assert clean_redis.client().get("runs:o-77") is None
    assert "idempotency_key_invalid" in worker.log_text()
    assert "decision=retry" not in worker.log_text()
