"""Adopting a policy in an existing code base changes nothing: ``init`` + the CP304 advice, on real workers.

The app (tests/support/apps/adopt/shopapp.py) is written the way Saleor writes
its tasks: its own Task base classes (one ``on_failure`` without ``super()``),
a webhook task that retries by hand reading its own ``retry_backoff`` and
``retry_kwargs``, a task with ``autoretry_for`` + ``retry_kwargs`` that also
calls a bare ``self.retry()``, and decorator time limits.

1. ``before``: the app as it is, no policy.
2. ``after``: ``celery-policy init`` wrote the policy; every decorator option
   CP304 says to remove is removed (``SHOP_REMOVE``); the policy is installed.
3. ``migrated``: the webhook's retry becomes ``raise self.retry(exc=exc)`` with
   the ``retry.self_retry: policy`` block ``init`` suggested, and dead letters
   are turned on.

Each run sends the same scenarios to a prefork worker and records attempts,
the gaps between them, the final state, the base classes' ``on_failure``
calls and the dead letters. ``before`` and ``after`` must match on all of
them; ``migrated`` on all but dead letters, which it writes for every final
failure.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from support.harness import make_worker, new_key, producer, wait_final
from support.servers import REPO_ROOT, RedisServer, WorkerProcess

from celery_policy.deadletter.store import Filter, RedisStreamStore
from celery_policy.support import celery_handles_hard_timeouts

pytestmark = pytest.mark.worker

SHOPAPP = "tests.support.apps.adopt.shopapp"
BIN = Path(sys.executable).parent

# scenario -> (task, args, expected delays between attempts in seconds, final state, exception type)
SCENARIOS: dict[str, tuple[str, list[Any], list[float], str, str | None]] = {
    "webhook-recovers": ("shop.webhook", [2], [0.25, 0.5], "SUCCESS", None),
    "webhook-gives-up": ("shop.webhook", [10], [0.25, 0.5, 1.0], "FAILURE", "WebhookError"),
    "sync-upstream-autoretry": ("shop.sync", ["upstream"], [0.2] * 5, "FAILURE", "UpstreamDown"),
    "sync-busy-bare-self-retry": ("shop.sync", ["busy"], [0.2] * 3, "FAILURE", "MaxRetriesExceededError"),
    "report-hard-time-limit": ("shop.report", [], [], "FAILURE", "TimeLimitExceeded"),
    "export-on-failure-without-super": ("shop.export", [], [], "FAILURE", "ExportError"),
    "export-hard-time-limit": ("shop.export_slow", [], [], "FAILURE", "TimeLimitExceeded"),
}
MARGIN_S = 1.5  # scheduling slack on an idle 2-core machine, on top of each delay the schedule asks for


def _margin_s() -> float:
    """MARGIN_S scaled by how loaded the machine is (a prefork worker's loop stalls for seconds at load 12 on 2 cores).

    The lower bound (never early) is what tells the schedules apart; the upper bound catches a wrong schedule
    (Celery's 180 s default delay, an exponential backoff whose sum is many times the expected one).
    """
    import os

    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return MARGIN_S * max(1.0, per_core)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "celery-policy"), *args],
        cwd=REPO_ROOT,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _base_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def _run_scenarios(server: RedisServer, db: int, log_dir: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    client = server.client(db=db)
    client.flushdb()
    url = server.url_for(db)
    worker = make_worker(
        log_dir, app=SHOPAPP, broker_url=url, policy=None, env={"SHOP_BROKER_URL": url, **env},
        pool="prefork", concurrency=4,
    )  # fmt: skip
    app = producer(url)
    try:
        worker.start()
        sent = {name: (new_key(name[:8]), *spec) for name, spec in SCENARIOS.items()}
        ids = {
            name: str(app.send_task(task, args=[key, *args]).id)
            for name, (key, task, args, _delays, _state, _exc) in sent.items()
        }
        results = {name: _outcome(client, worker, key, ids[name]) for name, (key, *_rest) in sent.items()}
        time.sleep(0.5)  # a late dead letter or hook would show now
        records = list(RedisStreamStore(url).iter(Filter()))
        for name, outcome in results.items():
            outcome["dead_letters"] = sorted(r.reason for r in records if r.task_id == ids[name])
            outcome["hooks"] = _hooks(client, ids[name])
        return results
    finally:
        worker.stop()
        app.close()


def _outcome(client: redis.Redis, worker: WorkerProcess, key: str, task_id: str) -> dict[str, Any]:
    meta = wait_final(client, task_id, timeout=45)
    runs = [json.loads(raw) for raw in client.lrange(f"shop:runs:{key}", 0, -1)]
    times = [float(r["t"]) for r in runs]
    result = meta.get("result")
    return {
        "state": meta["status"],
        "exc": result.get("exc_type") if isinstance(result, dict) else None,
        "attempts": len(runs),
        "retries": [r["retries"] for r in runs],
        "gaps": [later - earlier for earlier, later in itertools.pairwise(times)],
    }


def _hooks(client: redis.Redis, task_id: str) -> list[tuple[str, str]]:
    found = [json.loads(raw) for raw in client.lrange("shop:hooks", 0, -1)]
    return [(h["kind"], h["exc"]) for h in found if h["task_id"] == task_id]


def _advice(check_output: str) -> dict[str, list[str]]:
    """The decorator options CP304 says to remove, per task."""
    advice: dict[str, list[str]] = {}
    for finding in json.loads(check_output)["findings"]:
        if finding["code"] != "CP304":
            continue
        task = re.match(r"task '([^']+)'", finding["message"])
        removal = re.match(r"remove (.+?) from the decorator", finding["hint"] or "")
        if task and removal:
            advice[task.group(1)] = [o.strip() for o in removal.group(1).split(",")]
    return advice


def _assert_schedule(name: str, outcome: dict[str, Any]) -> None:
    _task, _args, delays, state, exc = SCENARIOS[name]
    assert (outcome["state"], outcome["exc"]) == (state, exc), (name, outcome)
    assert outcome["attempts"] == len(delays) + 1, (name, outcome)
    assert outcome["retries"] == list(range(len(delays) + 1)), (name, outcome)
    margin = _margin_s()
    for gap, delay in zip(outcome["gaps"], delays, strict=True):
        assert delay * 0.9 <= gap <= delay + margin, (name, outcome["gaps"], delays, margin)
    assert sum(outcome["gaps"]) <= sum(delays) + margin * max(1, len(delays) // 2), (name, outcome["gaps"], margin)


def test_init_and_the_cp304_advice_keep_every_task_behaving_as_before(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"SHOP_BROKER_URL": redis_server.url_for(10)}
    policy = tmp_path / "policy.yaml"
    done = _cli("init", "--app", SHOPAPP, "-o", str(policy), env=env)
    assert done.returncode == 0, done.stderr
    text = policy.read_text()
    document = yaml.safe_load(text)
    # translated only what takes effect: the webhook's retry options stay in its decorator, with a comment
    assert "shop.webhook" not in document["tasks"]
    assert "the task's code reads retry_backoff, retry_kwargs" in text
    checked = _cli("check", str(policy), "--app", SHOPAPP, "--format", "json", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    advice = _advice(checked.stdout)
    assert advice == {
        "shop.report": ["time_limit"],
        "shop.export_slow": ["time_limit"],
        "shop.sync": ["autoretry_for", "retry_kwargs"],  # default_retry_delay stays: its own self.retry() uses it
    }, advice

    before = _run_scenarios(redis_server, 10, tmp_path / "before", {})
    removed = ";".join(f"{task}={','.join(options)}" for task, options in advice.items())
    after = _run_scenarios(redis_server, 11, tmp_path / "after", {"SHOP_POLICY": str(policy), "SHOP_REMOVE": removed})

    for name in SCENARIOS:
        _assert_schedule(name, before[name])
        _assert_schedule(name, after[name])
        for field in ("state", "exc", "attempts", "retries", "hooks", "dead_letters"):
            assert after[name][field] == before[name][field], (name, field, before[name], after[name])
    assert before["export-on-failure-without-super"]["hooks"] == [("export_on_failure", "ExportError")]
    # Celery 5.7 calls on_failure on a hard time limit, 5.3-5.6 do not; either way the policy changes nothing
    hard = [("base_on_failure", "TimeLimitExceeded")] if celery_handles_hard_timeouts() else []
    assert before["report-hard-time-limit"]["hooks"] == hard

    # the one-line migration: raise self.retry(exc=exc), with the block init suggested, and dead letters on
    suggested = re.search(r"shop\.webhook:.*?#   (retry: \{self_retry: policy.*?\})\n", text, re.DOTALL)
    assert suggested, text
    migrated_policy = tmp_path / "migrated.yaml"
    tasks = dict(document["tasks"])
    tasks["shop.webhook"] = yaml.safe_load(suggested.group(1))
    migrated_policy.write_text(
        yaml.safe_dump({**document, "defaults": {"dead_letter": {"enabled": True}}, "tasks": tasks})
    )
    migrated = _run_scenarios(
        redis_server,
        12,
        tmp_path / "migrated",
        {"SHOP_POLICY": str(migrated_policy), "SHOP_REMOVE": removed, "SHOP_MIGRATED": "1"},
    )
    for name in SCENARIOS:
        _assert_schedule(name, migrated[name])
        for field in ("state", "exc", "attempts", "retries", "hooks"):
            assert migrated[name][field] == before[name][field], (name, field, before[name], migrated[name])
        expected = [] if SCENARIOS[name][3] == "SUCCESS" else [1]
        assert len(migrated[name]["dead_letters"]) == len(expected), (name, migrated[name])
    assert migrated["report-hard-time-limit"]["dead_letters"] == ["time_limit"]
    assert migrated["export-hard-time-limit"]["dead_letters"] == ["time_limit"]
