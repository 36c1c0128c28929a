"""Each benchmark script runs end to end on a tiny size, so the scripts cannot rot.

Their figures are not asserted here (speed is shown in benchmarks/README.md), only that
they run, print their table and write their JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "overhead": ["bench_overhead.py", "--calls", "500", "--rounds", "1"],
    "overhead-no-redelivery": ["bench_overhead.py", "--calls", "500", "--rounds", "1", "--variant", "no-redelivery"],
    "overhead-idempotency": ["bench_overhead.py", "--calls", "200", "--rounds", "1", "--variant", "idempotency"],
    "resolve": ["bench_resolve.py", "--repeats", "1", "--services", "2"],
    "dlq-batch1": ["bench_dlq.py", "--records", "100", "--stream", "300", "--batch", "1"],
    "boot": ["bench_boot.py", "--tasks", "200", "--globs", "20", "--exact", "20", "--rounds", "1"],
    "check": ["bench_check.py", "--tasks", "200", "--globs", "20", "--exact", "20", "--rounds", "1"],
    "e2e": ["bench_e2e.py", "--tasks", "40", "--rounds", "1", "--pools", "solo"],
    "dlq": ["bench_dlq.py", "--records", "100", "--stream", "300", "--rated", "50", "--spread-records", "20"],
    "fetch": ["bench_fetch.py", "--tasks", "40", "--rounds", "1", "--pools", "solo"],
    "web": ["bench_web.py", "--records", "300"],
    "overhead-breaker": ["bench_overhead.py", "--breaker", "--calls", "500", "--rounds", "1"],
    "flow": ["bench_flow.py", "--only", "overhead", "--tasks", "30", "--rounds", "1"],
    "delayed": ["bench_delayed.py", "--parked", "20", "--warmup", "20", "--tasks", "40", "--rounds", "1"],
    # two callgrind children (N and 2N) of the cheapest app: about a minute on a busy machine
    "overhead-instructions": [
        "bench_overhead.py",
        "--instructions",
        "--only",
        "bare",
        "--calls",
        "20",
        "--warmup",
        "20",
        "--repeats",
        "1",
        "--wall-calls",
        "50",
        "--rounds",
        "1",
        "--jobs",
        "2",
    ],
}


@pytest.mark.worker
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_script_runs_on_a_tiny_size(name: str, tmp_path: Path) -> None:
    script, *args = CASES[name]
    if "--instructions" in args and shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (bench_overhead.py --instructions counts with callgrind)")
    env = dict(os.environ, CELERY_POLICY_BENCH_RESULTS=str(tmp_path))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip(), "the script printed no table"
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["machine"]["cores"] == os.cpu_count()
    assert result["machine"]["commit"] != "unknown"
    assert result["machine"]["command"].startswith(script)
