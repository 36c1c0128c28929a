"""The failure-handling guide's ``ingest`` example, twice: decorator options vs a policy file.

tests/support/apps/runtime/guide_decorated.py is the guide's task as written (autoretry_for,
retry_backoff, retry_jitter, max_retries 8, acks_late); guide_policy.py has the
same body under a plain ``@app.task`` and tests/support/apps/runtime/guide.yaml.
Each runs in its own solo worker on its own Redis database; the same inputs
must end in the same states, results and retry counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery
from support.harness import RUNTIME_POLICIES, Journal, gaps, producer, runtime_worker, wait_final
from support.servers import RedisServer, WorkerProcess, running

pytestmark = pytest.mark.worker

APPS = {
    "decorated": ("tests.support.apps.runtime.guide_decorated", None, 7),
    "policy": ("tests.support.apps.runtime.guide_policy", RUNTIME_POLICIES / "guide.yaml", 8),
}
MAX_RETRIES = 8
BACKOFF_MAX_S = 1.0  # retry_backoff_max=1 / backoff.max: 1s
# A retry runs at its ETA plus the worker's timer and broker round trips: well under a second on an idle
# machine, more on a loaded 2-core one. Uncapped, the later delays would be drawn from [0, 2^n] s
# (up to 256 s at the 8th retry), far past the cap plus this slack.
SCHEDULING_SLACK_S = 2.0


@dataclass
class Side:
    worker: WorkerProcess
    client: Celery
    redis: redis.Redis


@dataclass(frozen=True)
class Outcome:
    state: str
    result: Any
    retries: tuple[int, ...]  # request.retries of every execution


@pytest.fixture(scope="module")
def sides(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Side]]:
    log_dir = tmp_path_factory.mktemp("rt-guide")
    with contextlib.ExitStack() as stack:
        found: dict[str, Side] = {}
        for name, (module, policy, db) in APPS.items():
            client_redis = redis_server.client(db=db)
            client_redis.flushdb()
            url = redis_server.url_for(db)
            worker = runtime_worker(log_dir, broker_url=url, policy=policy, app=module, name=f"guide-{name}")
            stack.enter_context(running(worker, request.session))
            client = producer(url)
            stack.callback(client.close)
            found[name] = Side(worker, client, client_redis)
        yield found


def _send(side: Side, scenarios: dict[str, int]) -> dict[str, str]:
    """Send ``guide.ingest(record_id)`` for each scenario (value: how many transient failures to script)."""
    ids = {}
    for record_id, failures in scenarios.items():
        side.redis.set(f"fail:{record_id}", failures)
        ids[record_id] = str(side.client.send_task("guide.ingest", args=(record_id,)).id)
    return ids


def _collect(side: Side, ids: dict[str, str], timeout: float = 40.0) -> dict[str, Outcome]:
    outcomes = {}
    journal = Journal(side.redis)
    for record_id, task_id in ids.items():
        meta = wait_final(side.redis, task_id, timeout=timeout)
        result = meta["result"]
        if meta["status"] == "FAILURE":
            result = result["exc_type"]
        outcomes[record_id] = Outcome(meta["status"], result, tuple(e["retries"] for e in journal.entries(record_id)))
    return outcomes


def _run_both(sides: dict[str, Side], scenarios: dict[str, int]) -> dict[str, dict[str, Outcome]]:
    """The same inputs to both workers at once; their outcomes by app."""
    sent = {name: _send(side, scenarios) for name, side in sides.items()}
    return {name: _collect(sides[name], ids) for name, ids in sent.items()}


def test_the_guides_ingest_task_behaves_the_same_under_decorator_options_and_under_a_policy(
    sides: dict[str, Side],
) -> None:
    scenarios = {
        "rec-ok": 0,  # succeeds at once
        "rec-flaky": 3,  # TimeoutError / ConnectionError 3 times, then succeeds
        "missing-rec": 0,  # PermanentError: no retry
        "rec-down": 100,  # transient every time: exhausts 8 retries
    }

    outcomes = _run_both(sides, scenarios)

    decorated, policy = outcomes["decorated"], outcomes["policy"]
    assert policy == decorated
    assert decorated == {
        "rec-ok": Outcome("SUCCESS", {"status": "ok"}, (0,)),
        "rec-flaky": Outcome("SUCCESS", {"status": "ok"}, (0, 1, 2, 3)),
        "missing-rec": Outcome("FAILURE", "PermanentError", (0,)),
        "rec-down": Outcome("FAILURE", "TimeoutError", tuple(range(MAX_RETRIES + 1))),
    }
    for name, side in sides.items():  # every delay was capped at 1 s in both
        delays = gaps(Journal(side.redis).entries("rec-down"))
        assert len(delays) == MAX_RETRIES
        assert max(delays) <= BACKOFF_MAX_S + SCHEDULING_SLACK_S, (name, delays)


def test_a_repeated_record_is_already_done_under_both(sides: dict[str, Side]) -> None:
    outcomes = _run_both(sides, {"rec-twice": 0})
    again = _run_both(sides, {"rec-twice": 0})

    for name in sides:
        assert outcomes[name]["rec-twice"].result == {"status": "ok"}
        assert again[name]["rec-twice"].result == {"status": "already_done"}
