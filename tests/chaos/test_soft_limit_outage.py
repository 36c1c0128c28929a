"""A broker outage stalls the soft time limit of a prefork worker: the chaos tally names it, never "lost".

With the prefork pool the worker's main process raises a task's soft time limit
(SIGUSR1 to the pool child) from a timer on its event loop. While the consumer
reconnects to a broker that is down, that loop does not run, so a ``chaos.slow``
body that outlasts the outage runs to its end: the task succeeds and is acked,
with no retry and no dead letter. ``chaos.slow`` has no side effect of its own,
so before ``overran:k`` the tally counted such a task as lost; the chaos runs'
"lost ``slow`` tasks" were this.
"""

from __future__ import annotations

import time
from pathlib import Path

import celery
import pytest
from celery import Celery
from support.servers import wait_for

from chaos.driver import POLICY, STREAM, ChaosConfig, ChaosRun, _dead_letters

pytestmark = pytest.mark.worker

CELERY_VERSION = tuple(int(part) for part in celery.__version__.split(".")[:2])
BODY_S = 3.0  # chaos.slow sleeps this long; its policy's soft time limit is 1 s (hard 5 s)


def test_a_slow_task_that_outlasts_a_broker_outage_is_tallied_as_overran_not_lost(tmp_path: Path) -> None:
    config = ChaosConfig(tasks=1, mix="slow", workers=1, concurrency=1)
    run = ChaosRun(config, tmp_path)
    run.broker_server.start()
    run.evidence_server.start()
    evidence = run.evidence_server.client()
    (tmp_path / "policy.yaml").write_text(
        POLICY.format(
            max_redeliveries=config.max_redeliveries,
            reliable="true",
            evidence=run.evidence_server.url,
            stream=STREAM,
            later_backoff_s=config.later_backoff_s,
        )
    )
    worker = None
    try:
        worker = run._worker()
        producer = Celery("outage-producer", broker=run.broker_server.url)
        producer.send_task("chaos.slow", args=[0, BODY_S], task_id="chaos-0")
        wait_for("the body to start", lambda: evidence.get("runs:0"), timeout=60)
        started = time.monotonic()
        run.broker_server.kill()  # the consumer loses its connection and retries it (2 s, then 4 s later)
        # The broker stays down past the end of the body, so the worker's loop is stalled through it.
        wait_for("the body to return", lambda: evidence.get("overran:0"), timeout=BODY_S + 5)
        assert time.monotonic() - started < BODY_S + 5
        run.broker_server.start()
        worker.wait_for_log(r"chaos\.slow\[chaos-0\] succeeded", timeout=30)
        worker.wait_for_log(r"Soft time limit \(1\.0s\) exceeded for chaos\.slow\[chaos-0\]", timeout=30)
        # Celery acks the success once the worker is connected again: the message is gone from the broker.
        wait_for("the ack", lambda: not run.broker_server.client().hlen("unacked"), timeout=30)
        run._tally([("chaos.slow", [0])], evidence)
        report = run.report
        assert report.lost == 0, report.lost_ids
        if CELERY_VERSION >= (5, 7):
            # the late soft limit lands outside the task: no retry, no dead letter, one run, tallied as overran
            assert int(evidence.get("runs:0") or 0) == 1
            assert _dead_letters(evidence) == {}
            assert report.overran_ids == [0], report
            assert report.dead_lettered == 0
        else:
            # before 5.7 the late signal is reported against the task (seen on 5.3: retried, run 3 times, then
            # dead-lettered once): still accounted for, never "lost"
            assert _dead_letters(evidence) == {0: 1}
            assert report.dead_lettered == 1
    finally:
        if worker is not None:
            worker.kill()
        run.broker_server.close()
        run.evidence_server.close()
