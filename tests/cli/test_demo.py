"""The README's main command runs scripts/demo.py: run it here so the demo cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.worker


def test_demo_shows_backoff_permanent_failure_soft_limit_and_replay() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    countdowns = re.findall(r"decision=retry attempt=\d countdown=([\d.]+) exc_type=builtins.TimeoutError", out)
    assert countdowns == ["0.2", "0.4", "0.8"], out
    assert "decision=dead_letter attempt=4 countdown=None exc_type=builtins.TimeoutError reason=exhausted" in out
    assert "exc_type=shop.errors.PaymentDeclined reason=permanent" in out
    assert re.search(r"decision=retry attempt=1 .*SoftTimeLimitExceeded", out), out
    assert re.search(r"decision=dead_letter attempt=2 .*SoftTimeLimitExceeded reason=exhausted", out), out
    assert "3 shown, 3 in" in out
    assert "1 replayed, 0 skipped, 0 failed" in out
    assert re.search(r"catalog\.ingest\[[0-9a-f-]{36}\] -> SUCCESS", out), out
    assert "2 shown, 2 in" in out
    assert "tok_declined" not in out  # the card token never reached the store or the listing
    assert re.search(r"console: http://127\.0\.0\.1:\d+/dead-letters \(HTTP 200\)", out), out
    assert re.search(r"token:   [0-9a-f]{48} ", out), out
