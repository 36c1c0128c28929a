# Celery's task decorator is untyped:
# mypy: disable-error-code="untyped-decorator"
"""The chaos suite's app: a mix of task outcomes whose side effects land on a SEPARATE Redis.

Environment: CELERY_BROKER_URL (the broker, restarted by the driver),
CHAOS_EVIDENCE_URL (never restarted: effects, run counts, dead letters),
CELERY_POLICY_FILE (written by the driver), CHAOS_TRANSPORT_OPTIONS (JSON,
optional: faster heartbeat/recovery for short runs), CHAOS_BROKER_TRANSPORT (optional:
an explicit ``broker_transport``, which install() must leave alone).

Evidence keys on the evidence Redis, per business key ``k`` (the task's index):
- ``fx:k``: INCR when the body's side effect is applied (``chaos.ok``, ``chaos.flaky``, ``chaos.later``);
- ``fxby:k``: in the same transaction, ``"<pid> <epoch seconds>"`` of the process that applied it (RPUSH),
  so the driver can tell a duplicate whose first effect's process it SIGKILLed (after the effect, before
  the idempotency key stored the result: the at-least-once window no guard can close) from any other;
- ``runs:k``: INCR each time any body starts (poison pills: how often it ran);
- ``late:k``: the epoch seconds of each run of ``chaos.later`` (RPUSH), to check it ran after its backoff;
- ``overran:k``: INCR when a ``chaos.slow`` body returns, i.e. ran to its end past its soft time limit
  (with the prefork pool the worker's main process delivers that limit from its event loop; while the
  loop is stalled, e.g. reconnecting to a restarted broker, the limit is not raised in time).
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

import celery_policy

BROKER = os.environ["CELERY_BROKER_URL"]
EVIDENCE = redis.Redis.from_url(os.environ["CHAOS_EVIDENCE_URL"], socket_timeout=10)

app = Celery("chaosapp", broker=BROKER, task_cls=celery_policy.PolicyTask)
app.conf.broker_connection_retry_on_startup = True
app.conf.task_ignore_result = True
app.conf.broker_transport_options = json.loads(os.environ.get("CHAOS_TRANSPORT_OPTIONS") or "{}")
if os.environ.get("CHAOS_BROKER_TRANSPORT"):
    app.conf.broker_transport = os.environ["CHAOS_BROKER_TRANSPORT"]
celery_policy.install(app)


def _started(key: int) -> int:
    return int(EVIDENCE.incr(f"runs:{key}"))


def _effect(key: int) -> int:
    """The side effect, and which process applied it when, in one MULTI."""
    pipe = EVIDENCE.pipeline(transaction=True)
    pipe.incr(f"fx:{key}")
    pipe.rpush(f"fxby:{key}", f"{os.getpid()} {time.time()}")
    return int(pipe.execute()[0])


@app.task(name="chaos.ok")
def ok(key: int, work_s: float = 0.005) -> int:
    """Succeeds: the side effect is one INCR, guarded by the policy's idempotency key."""
    _started(key)
    time.sleep(work_s)
    return _effect(key)


@app.task(name="chaos.flaky", bind=True)
def flaky(self: object, key: int, fail_times: int) -> int:
    """Fails with a transient ConnectionError on its first ``fail_times`` attempts, then succeeds."""
    _started(key)
    retries = getattr(getattr(self, "request", None), "retries", 0) or 0
    if retries < fail_times:
        msg = f"transient failure {retries + 1} of {fail_times}"
        raise ConnectionError(msg)
    return _effect(key)


@app.task(name="chaos.permanent")
def permanent(key: int) -> None:
    """Always fails with a permanent error: dead-lettered at once."""
    _started(key)
    msg = f"permanent failure of {key}"
    raise ValueError(msg)


@app.task(name="chaos.slow")
def slow(key: int, sleep_s: float = 3.0) -> None:
    """Runs past its soft time limit every time: retried once, then dead-lettered."""
    _started(key)
    time.sleep(sleep_s)
    EVIDENCE.incr(f"overran:{key}")  # the soft time limit never interrupted this run


@app.task(name="chaos.poison")
def poison(key: int) -> None:
    """Kills the process that runs it: stopped by ack.max_redeliveries, then dead-lettered."""
    _started(key)
    os._exit(9)


@app.task(name="chaos.later", bind=True)
def later(self: object, key: int) -> int:
    """Fails its first attempt with a transient error; the policy retries it after a long backoff (delayed set)."""
    _started(key)
    EVIDENCE.rpush(f"late:{key}", time.time())
    retries = getattr(getattr(self, "request", None), "retries", 0) or 0
    if not retries:
        msg = "transient failure before a long backoff"
        raise ConnectionError(msg)
    return _effect(key)
