"""The chaos suite, small: real prefork workers SIGKILLed (pool children and main processes), the broker restarted.

The full run (10,000 tasks, 24 main-worker kills, 3 broker restarts) is
``scripts/chaos.py``; this one runs in the normal suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.driver import ChaosConfig, ChaosRun, format_table

pytestmark = pytest.mark.worker


def test_nothing_lost_nothing_run_twice_under_kills_and_a_broker_restart(tmp_path: Path) -> None:
    config = ChaosConfig(tasks=400, seed=5, main_kills=3, child_kills=2, restarts=1, deadline_s=150)
    report = ChaosRun(config, tmp_path).run()
    table = format_table([report])
    assert report.main_kills == 3, table
    assert report.child_kills == 2, table
    assert report.restarts == 1, table
    # Every fault landed while messages were taken and not yet acked: none hit an idle fleet.
    assert len(report.in_flight_at_fault) == 6, report.in_flight_at_fault
    assert all(n > 0 for _action, n in report.in_flight_at_fault), report.in_flight_at_fault
    assert report.lost == 0, f"{table}\nlost: {report.lost_ids}"
    assert report.pending == 0, table
    assert report.succeeded + report.dead_lettered == config.tasks, table
    # A task that succeeds (ok, flaky) is never dead-lettered, not even once alongside its success.
    assert report.unexpected_dead_letters == 0, report.unexpected_dead_letter_ids
    # A side effect runs twice only when the process that applied it was SIGKILLed after the effect and
    # before the idempotency key stored the result (at-least-once); never for any other reason.
    assert set(report.duplicate_kinds) == set(report.duplicates_after_kill), (table, report.duplicate_kinds)
    assert set(report.permanent_dead_letters.values()) == {1}, report.permanent_dead_letters
    cap = config.max_redeliveries + 1
    assert all(1 <= runs <= cap for runs in report.poison_runs.values()), report.poison_runs
    assert set(report.poison_dead_letters.values()) == {1}, report.poison_dead_letters
    assert report.kinds["chaos.later"] >= 2, report.kinds  # long-backoff retries, waiting in the delayed set
    assert report.early_retries == [], report.early_retries
    assert report.unexpected_dead_letters == 0, table
    assert report.worker_exits == [], report.worker_exits  # no worker died of a broker restart by itself
