"""A stalled worker loop no longer stalls the soft time limit: the pool process raises it (the backstop).

With the prefork pool the worker's main process raises a task's soft time limit
(SIGUSR1 to the pool child) from a timer on its event loop. While that loop
does not run (the consumer reconnecting to a broker that is down, or the main
process stopped) a ``chaos.slow`` body that outlasts its limit used to run to
its end: it succeeded and was acked, tallied as ``overran``. The backstop
(celery_policy/runtime/soft_limit.py) raises the limit in the pool process
shortly after it is due, so the policy's ``SoftTimeLimitExceeded`` path runs:
``chaos.slow`` is retried once, then dead-lettered, exactly once, never lost.

Each test fails without the backstop: the body runs to its end while the loop
is stalled (``overran:0`` is set, and the soft limit's log line never comes).
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from support.servers import WorkerProcess, wait_for

from chaos.driver import APPS, FAST_LIVENESS, POLICY, STREAM, ChaosConfig, ChaosRun, _dead_letters, _pending_ids

pytestmark = pytest.mark.worker

BODY_S = 3.0  # chaos.slow sleeps this long; its policy's soft time limit is 1 s (hard 5 s)
SOFT_S = 1.0
BACKSTOP = r"soft_time_limit_backstop.*chaos-0"  # the pool process raised the limit (its log line)


def _run(tmp_path: Path) -> tuple[ChaosRun, Any]:
    config = ChaosConfig(tasks=1, mix="slow", workers=1, concurrency=1)
    run = ChaosRun(config, tmp_path)
    run.broker_server.start()
    run.evidence_server.start()
    (tmp_path / "policy.yaml").write_text(
        POLICY.format(
            max_redeliveries=config.max_redeliveries,
            reliable="true",
            evidence=run.evidence_server.url,
            stream=STREAM,
            later_backoff_s=config.later_backoff_s,
        )
    )
    return run, run.evidence_server.client()


def _past_the_body(started: float, evidence: Any, worker: WorkerProcess) -> None:
    """Once the body would have ended: it did not, the pool process raised its limit about when due."""
    time.sleep(max(0.0, BODY_S + 0.5 - (time.monotonic() - started)))
    assert not evidence.get("overran:0"), "the body ran to its end: its soft time limit did not hold"
    lines = worker.wait_for_log(BACKSTOP, timeout=1)
    elapsed = float(re.search(r"elapsed_s=([\d.]+)", lines[0]).group(1))  # type: ignore[union-attr]
    assert SOFT_S < elapsed < SOFT_S + 1.0, lines[0]


def _dead_letter_types(evidence: Any) -> list[str]:
    return [json.loads(next(iter(fields.values()))).get("exc_type", "") for _id, fields in evidence.xrange(STREAM)]


def _settled(run: ChaosRun, evidence: Any) -> None:
    """Dead-lettered once, nothing left in the broker; and still so a moment later (no further run)."""
    wait_for("the dead letter", lambda: _dead_letters(evidence) == {0: 1}, timeout=60)
    broker = run.broker_server.client()
    wait_for("an empty broker", lambda: not _pending_ids(broker) and not broker.hlen("unacked"), timeout=30)
    runs = int(evidence.get("runs:0") or 0)
    time.sleep(2.0)
    assert int(evidence.get("runs:0") or 0) == runs
    assert _dead_letters(evidence) == {0: 1}
    assert all(t.endswith("SoftTimeLimitExceeded") for t in _dead_letter_types(evidence)), _dead_letter_types(evidence)
    assert not evidence.get("overran:0"), "a run of chaos.slow went past its soft time limit to its end"
    run._tally([("chaos.slow", [0])], evidence)
    report = run.report
    assert report.lost == 0, report.lost_ids
    assert report.overran_ids == [], report
    assert report.dead_lettered == 1
    assert report.succeeded == 0


def test_the_soft_limit_holds_while_the_broker_is_down(tmp_path: Path) -> None:
    run, evidence = _run(tmp_path)
    worker = None
    try:
        worker = run._worker()
        producer = Celery("outage-producer", broker=run.broker_server.url)
        producer.send_task("chaos.slow", args=[0, BODY_S], task_id="chaos-0")
        wait_for("the body to start", lambda: evidence.get("runs:0"), timeout=60)
        started = time.monotonic()
        run.broker_server.kill()  # the consumer loses its connection and retries it (2 s, then 4 s later)
        # The broker stays down past the end of the body, so the worker's loop is stalled through it:
        # the soft limit comes from the pool process, a little after it is due.
        _past_the_body(started, evidence, worker)
        assert not run.broker_server.running  # still down: all of that happened during the outage
        run.broker_server.start()
        # Once the worker is connected again the message runs (its limit from the main process now), is
        # retried once and then dead-lettered, as the policy says. Where the retry could not be published
        # during the outage (kombu 5.7 gives up), the policy put the message back: 3 runs; the late
        # requeue from the channel the outage closed does not push a second copy (transport/redis.py
        # QoS.reject). Where the publish waited for the broker (kombu 5.3), the retry and the copy the
        # closed channel gave back both run, as any late-acked task running through an outage does:
        # 4 runs, still one dead letter (the store records a failure once per task id, attempt and reason).
        _settled(run, evidence)
        assert int(evidence.get("runs:0") or 0) in (3, 4)
    finally:
        if worker is not None:
            worker.kill()
        run.broker_server.close()
        run.evidence_server.close()


def test_the_soft_limit_holds_while_the_worker_main_process_is_stopped(tmp_path: Path) -> None:
    """SIGSTOP stalls the main process (its loop and its timers) while the pool child keeps running."""
    run, evidence = _run(tmp_path)
    run.liveness = FAST_LIVENESS | {"reliable_heartbeat_ttl": 60.0}  # a stopped main process is not a dead one
    worker = None
    stopped = False
    try:
        worker = run._worker()
        child = worker.wait_children(1)
        assert len(child) == 1
        producer = Celery("stall-producer", broker=run.broker_server.url)
        producer.send_task("chaos.slow", args=[0, BODY_S], task_id="chaos-0")
        wait_for("the body to start", lambda: evidence.get("runs:0"), timeout=60)
        started = time.monotonic()
        time.sleep(0.3)  # the main process has read the child's ACK: its soft-limit timer is set
        worker.signal(signal.SIGSTOP)
        stopped = True
        _past_the_body(started, evidence, worker)
        # The policy retried it from the pool process while the main process was stopped.
        assert 0 in _pending_ids(run.broker_server.client(), unacked=False)
        worker.signal(signal.SIGCONT)
        stopped = False
        # Celery's own timer fires now, late: its signal reaches the idle child and is dropped there
        # (billiard would raise it in its wait for the next job and the child would exit).
        worker.wait_for_log(r"Soft time limit \(1\.0s\) exceeded for chaos\.slow\[chaos-0\]", timeout=10)
        _settled(run, evidence)
        assert int(evidence.get("runs:0") or 0) == 2  # the first run, and its one retry (limited by Celery)
        assert worker.children() == child, "the late signal made the pool process exit"
        assert "Pool process" not in worker.log_text()
    finally:
        if worker is not None:
            if stopped:
                worker.signal(signal.SIGCONT)
            worker.kill()
        run.broker_server.close()
        run.evidence_server.close()


def test_a_solo_worker_keeps_celerys_behaviour_and_raises_no_soft_limit(tmp_path: Path) -> None:
    """Solo runs tasks in the worker's main process, where Celery enforces no soft limit: no backstop either."""
    run, evidence = _run(tmp_path)
    worker = WorkerProcess(
        "chaosapp",
        log_path=tmp_path / "solo.log",
        pool="solo",
        hostname="solo@localhost",
        cwd=APPS,
        env={
            "CELERY_BROKER_URL": run.broker_server.url,
            "CHAOS_EVIDENCE_URL": run.evidence_server.url,
            "CELERY_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "CHAOS_TRANSPORT_OPTIONS": json.dumps(FAST_LIVENESS),
        },
    )
    try:
        worker.start()
        producer = Celery("solo-producer", broker=run.broker_server.url)
        producer.send_task("chaos.slow", args=[0, SOFT_S + 0.8], task_id="chaos-0")  # past the backstop's 1.3 s
        wait_for("the body to end", lambda: evidence.get("overran:0"), timeout=60)
        worker.wait_for_log(r"chaos\.slow\[chaos-0\] succeeded", timeout=10)
        assert "soft_time_limit_backstop" not in worker.log_text()
    finally:
        worker.kill()
        run.broker_server.close()
        run.evidence_server.close()
