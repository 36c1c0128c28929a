"""Which policy section a task gets, seen in a running worker: glob vs exact name, environment overlays, routes.

tests/support/apps/runtime/selection.yaml is served by two solo workers on their
own Redis databases: one in the base environment, one with
CELERY_POLICY_ENV=strict. The same task code retries a different number of
times in each. Routing is tested with a producer that installed the policy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery
from support.harness import (
    RTAPP,
    RUNTIME_POLICIES,
    Journal,
    deliveries_once_drained,
    log_events,
    new_key,
    producer,
    runtime_worker,
    wait_final,
)
from support.servers import REPO_ROOT, RedisServer, WorkerProcess, running

import celery_policy

pytestmark = pytest.mark.worker

POLICY = RUNTIME_POLICIES / "selection.yaml"
DBS = {"base": 4, "strict": 5}


@dataclass
class Side:
    worker: WorkerProcess
    client: Celery
    redis: redis.Redis
    url: str

    @property
    def journal(self) -> Journal:
        return Journal(self.redis)

    def attempts_until_failure(self, task: str) -> tuple[int, list[dict[str, Any]]]:
        key = new_key()
        task_id = str(self.client.send_task(task, args=(key, 100)).id)
        meta = wait_final(self.redis, task_id)
        assert meta["status"] == "FAILURE"
        assert meta["result"]["exc_type"] == "Transient"
        (delivered,) = deliveries_once_drained(self.worker, self.redis, task_id)
        runs = len(self.journal.entries(key))
        assert delivered == runs, (delivered, runs)
        return runs, log_events(self.worker.log_text(), "policy_decision", task_id=task_id)


@pytest.fixture(scope="module")
def sides(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Side]]:
    """One solo worker per environment, each with its own database (so each consumes only its own messages)."""
    log_dir = tmp_path_factory.mktemp("rt-selection")
    with contextlib.ExitStack() as stack:
        found: dict[str, Side] = {}
        for name, extra in (("base", {}), ("strict", {"CELERY_POLICY_ENV": "strict"})):
            client_redis = redis_server.client(db=DBS[name])
            client_redis.flushdb()
            url = redis_server.url_for(DBS[name])
            worker = runtime_worker(log_dir, broker_url=url, policy=POLICY, queues=["celery"], env=extra, name=name)
            stack.enter_context(running(worker, request.session))
            client = producer(url)
            stack.callback(client.close)
            found[name] = Side(worker, client, client_redis, url)
        yield found


def test_an_exact_task_name_beats_a_matching_glob(sides: dict[str, Side]) -> None:
    base = sides["base"]

    exact_attempts, exact_decisions = base.attempts_until_failure("rt.prec.exact")
    glob_attempts, glob_decisions = base.attempts_until_failure("rt.prec.other")
    default_attempts, _ = base.attempts_until_failure("rt.transient")

    assert (exact_attempts, glob_attempts, default_attempts) == (3 + 1, 1 + 1, 2 + 1)
    # merging is per field: the exact entry sets only max_retries and keeps the glob's 150 ms backoff
    assert {d["countdown"] for d in exact_decisions if d["decision"] == "retry"} == {0.15}
    assert {d["countdown"] for d in glob_decisions if d["decision"] == "retry"} == {0.15}
    assert {d["max"] for d in exact_decisions} == {3}
    assert {d["max"] for d in glob_decisions} == {1}


def test_the_environment_overlay_chosen_by_celery_policy_env_changes_retry_counts(sides: dict[str, Side]) -> None:
    strict = sides["strict"]

    exact_attempts, _ = strict.attempts_until_failure("rt.prec.exact")
    glob_attempts, glob_decisions = strict.attempts_until_failure("rt.prec.other")
    default_attempts, default_decisions = strict.attempts_until_failure("rt.transient")

    # strict sets max_retries 0 on defaults and on the glob; the exact name still beats the overlaid glob
    assert (exact_attempts, glob_attempts, default_attempts) == (3 + 1, 0 + 1, 0 + 1)
    assert [(d["decision"], d["reason"], d["max"]) for d in glob_decisions] == [("fail", "exhausted", 0)]
    assert [(d["decision"], d["reason"], d["max"]) for d in default_decisions] == [("fail", "exhausted", 0)]


def test_a_route_sends_the_task_to_its_queue_and_only_a_worker_consuming_it_runs_it(
    sides: dict[str, Side], celery_worker_process: Callable[..., WorkerProcess]
) -> None:
    base = sides["base"]
    app = Celery("rt-routed-producer", broker=base.url, backend=base.url, task_cls=celery_policy.PolicyTask)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    celery_policy.install(app, POLICY)
    key = new_key()

    routed = app.send_task("rt.report", args=(key,))

    deadline = time.monotonic() + 5
    while base.redis.llen("q_reports") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert base.redis.llen("q_reports") == 1
    # A task sent after it, on the default queue, runs: the default worker polled since, and left it alone.
    marker = str(base.client.send_task("rt.ok", args=(1,)).id)
    assert wait_final(base.redis, marker)["status"] == "SUCCESS"
    assert base.redis.llen("q_reports") == 1
    assert base.journal.entries(key) == []  # the worker on the default queue never takes it

    reports = celery_worker_process(
        RTAPP,
        queues=["q_reports"],
        env={"RT_BROKER_URL": base.url, "CELERY_POLICY_FILE": str(POLICY)},
        broker_url=base.url,
        cwd=REPO_ROOT,
        pythonpath=[REPO_ROOT],
    )
    meta = wait_final(base.redis, str(routed.id))
    assert meta["status"] == "SUCCESS"
    [entry] = base.journal.entries(key)
    assert entry["queue"] == "q_reports"
    assert base.redis.llen("q_reports") == 0
    reports.wait_for_log(rf"Task rt\.report\[{routed.id}\] succeeded", timeout=10)
    app.close()


def test_a_task_without_a_route_goes_to_the_default_queue(sides: dict[str, Side]) -> None:
    base = sides["base"]
    app = Celery("rt-unrouted-producer", broker=base.url, backend=base.url, task_cls=celery_policy.PolicyTask)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    celery_policy.install(app, POLICY)

    result = app.send_task("rt.ok", args=(41,))

    assert result.get(timeout=20) == 42
    app.close()
