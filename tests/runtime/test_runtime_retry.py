"""Retries, budgets, give-up decisions, result shaping, hooks and log redaction in real workers.

One worker per pool (solo, then prefork) runs every test of this module
against tests/support/apps/runtime/retry.yaml. Outcomes are read from Redis: the
stored result, the journal each execution appends to, and the worker's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from support.harness import (
    RUNTIME_POLICIES,
    Journal,
    deliveries_once_drained,
    gaps,
    log_events,
    new_key,
    producer,
    runtime_worker,
    wait_events,
    wait_final,
)
from support.servers import RedisServer, WorkerProcess, running

import celery_policy
from celery_policy.backoff import delay_bounds

pytestmark = pytest.mark.worker

POLICY = RUNTIME_POLICIES / "retry.yaml"
# A retry runs at its ETA plus the worker's timer, broker round trips and (prefork) the hand-off to a pool
# process: about 0.1 s on an idle machine, over a second seen on a loaded 2-core one. Lateness is what
# this allows; the lower bounds (never before the policy's delay) and the logged countdown stay exact,
# and a wrong delay (Celery's 180 s default, an unbounded backoff) is far outside it.
SCHEDULING_SLACK_S = 1.5
EARLY_S = 0.02  # the ETA is taken after the journal entry; clocks are the same host's


class Env:
    def __init__(self, worker: WorkerProcess, client: Celery, redis_client: redis.Redis) -> None:
        self.worker = worker
        self.client = client
        self.redis = redis_client
        self.journal = Journal(redis_client)

    def send(self, name: str, *args: Any, **kwargs: Any) -> str:
        return str(self.client.send_task(name, args=args, kwargs=kwargs).id)

    def final(self, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return wait_final(self.redis, task_id, timeout)

    def decisions(self, task_id: str) -> list[dict[str, Any]]:
        return log_events(self.worker.log_text(), "policy_decision", task_id=task_id)

    def settle(self, *task_ids: str) -> list[int]:
        """How often each task was delivered, once the broker holds no message (nothing more can run)."""
        return deliveries_once_drained(self.worker, self.redis, *task_ids)


@pytest.fixture(scope="module", params=["solo", "prefork"])
def env(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    db = {"solo": 1, "prefork": 2}[request.param]
    client_redis = redis_server.client(db=db)
    client_redis.flushdb()
    url = redis_server.url_for(db)
    worker = runtime_worker(
        tmp_path_factory.mktemp("rt-retry"),
        broker_url=url,
        policy=POLICY,
        pool=request.param,
        concurrency=2 if request.param == "prefork" else 1,
        name=f"retry-{request.param}",
    )
    client = producer(url)
    with running(worker, request.session):
        yield Env(worker, client, client_redis)
    client.close()


def _backoff(task: str) -> Any:
    return celery_policy.load(POLICY, check_imports=False).for_task(task).policy.retry.backoff


@pytest.mark.parametrize("jitter", ["equal", "none", "full"])
def test_transient_error_is_retried_with_delays_inside_the_jitter_bounds_then_succeeds(env: Env, jitter: str) -> None:
    task = f"rt.backoff.{jitter}"
    backoff = _backoff(task)
    assert (backoff.initial, backoff.factor, backoff.jitter) == (0.3, 2.0, jitter)
    key = new_key()

    task_id = env.send(task, key, 3)

    meta = env.final(task_id)
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == "ok after 4"
    entries = env.journal.entries(key)
    assert [e["retries"] for e in entries] == [0, 1, 2, 3]
    decisions = env.decisions(task_id)
    assert [d["decision"] for d in decisions] == ["retry"] * 3
    for n, (gap, decision) in enumerate(zip(gaps(entries), decisions, strict=True)):
        low, high = delay_bounds(backoff, n)
        assert low - 0.001 <= decision["countdown"] <= high + 0.001, (n, decision)
        assert low - EARLY_S <= gap <= high + SCHEDULING_SLACK_S, (n, gap, (low, high))
        assert decision["countdown"] - EARLY_S <= gap <= decision["countdown"] + SCHEDULING_SLACK_S, (n, gap, decision)


def test_transient_error_exhausting_max_retries_fails_after_max_retries_plus_one_attempts(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.transient", key, 100)

    meta = env.final(task_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "Transient"
    assert env.settle(task_id) == [len(env.journal.entries(key))] == [3 + 1]
    decisions = env.decisions(task_id)
    assert [d["decision"] for d in decisions] == ["retry", "retry", "retry", "fail"]
    assert decisions[-1]["reason"] == "exhausted"
    assert decisions[-1]["attempt"] == 4


def test_permanent_error_fails_on_the_first_attempt(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.permanent", key)

    meta = env.final(task_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "Permanent"
    assert env.settle(task_id) == [len(env.journal.entries(key))] == [1]
    [decision] = env.decisions(task_id)
    assert (decision["decision"], decision["reason"], decision["attempt"]) == ("fail", "permanent", 1)
    assert "retry.yaml" in decision["policy_source"]


def test_unknown_error_retries_unknown_max_retries_times_then_calls_the_on_failure_hook(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.unknown", key)

    meta = env.final(task_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "Flaky"
    assert env.settle(task_id) == [len(env.journal.entries(key))] == [2 + 1]
    [hook] = env.journal.wait_hooks(task_id, 1)
    assert hook["action"] == "fail"
    assert hook["reason"] == "unknown_exhausted"
    assert hook["attempt"] == 3
    assert hook["max_retries"] == 2
    assert hook["exc"] == "Flaky"
    assert [d["decision"] for d in env.decisions(task_id)] == ["retry", "retry", "fail"]


def test_a_rule_keeps_its_own_counter_so_rate_limits_do_not_use_up_the_task_retries(env: Env) -> None:
    key = new_key()

    # 4 RateLimited (rule budget 5) then 2 Transient (task budget 3): 6 retries, more than either budget alone
    task_id = env.send("rt.mixed", key, 4, 2, 0.1)

    meta = env.final(task_id)
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == "ok after 7"
    assert len(env.journal.entries(key)) == 7
    decisions = env.decisions(task_id)
    assert [(d["exc_type"].rsplit(".", 1)[-1], d["max"]) for d in decisions] == [("RateLimited", 5)] * 4 + [
        ("Transient", 3)
    ] * 2
    assert all("retry.yaml" in d["policy_source"] for d in decisions), [d["policy_source"] for d in decisions]


def test_the_task_counter_still_caps_transient_errors_after_rule_retries(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.mixed", key, 2, 100, 0.1)

    meta = env.final(task_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "Transient"
    # 2 rule retries, then 3 task retries, then give up
    assert env.settle(task_id) == [len(env.journal.entries(key))] == [2 + 3 + 1]
    assert env.decisions(task_id)[-1]["reason"] == "exhausted"


def test_a_rule_budget_runs_out_on_its_own(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.mixed", key, 100, 0, 0.1)

    meta = env.final(task_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "RateLimited"
    assert env.settle(task_id) == [len(env.journal.entries(key))] == [5 + 1]


@pytest.mark.parametrize(
    ("retry_after", "expected_s"),
    [pytest.param(0.35, 0.35, id="honoured"), pytest.param(30.0, 0.5, id="capped-by-backoff-max")],
)
def test_delay_from_retry_after_is_honoured_and_capped_by_backoff_max(
    env: Env, retry_after: float, expected_s: float
) -> None:
    assert _backoff("rt.rate_limited").max == 0.5
    key = new_key()

    task_id = env.send("rt.rate_limited", key, 2, 0, retry_after)

    meta = env.final(task_id)
    assert meta["status"] == "SUCCESS"
    entries = env.journal.entries(key)
    assert len(entries) == 3
    assert [d["countdown"] for d in env.decisions(task_id)] == [expected_s, expected_s]
    for gap in gaps(entries):
        assert expected_s - EARLY_S <= gap <= expected_s + SCHEDULING_SLACK_S, gaps(entries)


def test_return_error_result_turns_a_failure_into_success_with_an_error_payload(env: Env) -> None:
    key = new_key()

    task_id = env.send("rt.structured", key)

    meta = env.final(task_id)
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == {
        "ok": False,
        "error": {"type": "Permanent", "message": "cannot parse", "reason": "permanent"},
    }
    assert len(env.journal.entries(key)) == 1
    assert env.client.AsyncResult(task_id).get(timeout=10) == meta["result"]


def test_the_on_retry_on_failure_and_on_dead_letter_hooks_run_once_for_their_decisions(env: Env) -> None:
    """One retry, then a dead letter: on_retry sees the retry, on_failure and on_dead_letter the dead letter."""
    key = new_key()

    task_id = env.send("rt.hooks.all", key, 100)

    assert env.final(task_id)["status"] == "FAILURE"
    hooks = env.journal.wait_hooks(task_id, 3)
    assert [(h["hook"], h["action"], h["attempt"]) for h in hooks] == [
        ("on_retry", "retry", 1),
        ("on_failure", "dead_letter", 2),
        ("on_dead_letter", "dead_letter", 2),
    ]
    assert {h["exc"] for h in hooks} == {"Transient"}
    assert env.settle(task_id) == [2]
    assert env.journal.hooks(task_id) == hooks  # nothing called twice


def test_a_hook_that_raises_changes_neither_the_state_nor_the_retry_count(env: Env) -> None:
    hooked_key, plain_key = new_key(), new_key()

    hooked_id = env.send("rt.hooked", hooked_key, 100)
    plain_id = env.send("rt.unhooked", plain_key, 100)

    hooked, plain = env.final(hooked_id), env.final(plain_id)
    assert hooked["status"] == plain["status"] == "FAILURE"
    assert hooked["result"]["exc_type"] == plain["result"]["exc_type"] == "Transient"
    runs = [len(env.journal.entries(hooked_key)), len(env.journal.entries(plain_key))]
    assert env.settle(hooked_id, plain_id) == runs == [2 + 1, 2 + 1]
    failed = wait_events(env.worker, "policy_hook_failed", 3, task_id=hooked_id)
    assert sorted(e["hook"] for e in failed) == ["on_failure", "on_retry", "on_retry"]
    assert all(e["error"] == "RuntimeError: hook bug" for e in failed)
    assert log_events(env.worker.log_text(), "policy_hook_failed", task_id=plain_id) == []
    assert [d["decision"] for d in env.decisions(hooked_id)] == [d["decision"] for d in env.decisions(plain_id)]


def test_secret_arguments_never_reach_the_worker_log_but_their_names_do(env: Env) -> None:
    password, card = "pw-Zq8xK2-positional", "4111-9999-2222-1881"
    kw_password = "pw-Vb3nT7-keyword"
    key = new_key()

    positional_id = env.send("rt.secret", key, password, card_number=card)
    keyword_id = env.send("rt.secret", key, password=kw_password)

    for task_id in (positional_id, keyword_id):
        assert env.final(task_id)["status"] == "FAILURE"
    [positional] = wait_events(env.worker, "policy_decision", task_id=positional_id)
    [keyword] = wait_events(env.worker, "policy_decision", task_id=keyword_id)
    assert positional["args"] == [key, "***"]
    assert positional["kwargs"] == {"card_number": "***"}
    assert keyword["kwargs"] == {"password": "***"}
    log = env.worker.log_text()
    for secret in (password, card, kw_password):
        assert secret not in log
    assert '"card_number": "***"' in log
    assert '"password": "***"' in log


def test_a_task_declared_with_its_own_base_class_gets_the_policy(env: Env) -> None:
    """``base=OwnBase`` (not PolicyTask): the annotator still binds the policy's retries and backoff."""
    key = new_key()

    task_id = env.send("rt.based", key, 100)

    meta = env.final(task_id)
    assert meta["status"] == "FAILURE"
    entries = env.journal.entries(key)
    assert {e["base"] for e in entries} == {"OwnBase"}
    # Celery alone would fail it at once (no autoretry on the decorator): the policy retries it 3 times.
    assert [e["retries"] for e in entries] == [0, 1, 2, 3]
    decisions = env.decisions(task_id)
    assert [d["decision"] for d in decisions] == ["retry", "retry", "retry", "fail"]
    assert "retry.yaml" in decisions[0]["policy_source"]
