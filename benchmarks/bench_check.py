"""`celery-policy check --all-envs` on a big file: 1,000 globs + 1,000 exact entries, 5 environments.

Times the whole command as users run it (a fresh process, imports included) and
in-process (the lint work alone). There is no plain-Celery counterpart to
compare with; the reference is how long Python takes to start and import the CLI.

    .venv/bin/python benchmarks/bench_check.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import save  # noqa: E402
from benchmarks.bench_boot import task_names, write_policy  # noqa: E402
from celery_policy.cli import main as cli_main  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--globs", type=int, default=1000)
    parser.add_argument("--exact", type=int, default=1000)
    opts = parser.parse_args()
    cli = str(ROOT / ".venv" / "bin" / "celery-policy")
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "big.yaml"
        write_policy(policy, task_names(opts.tasks), opts.globs, opts.exact, envs=5)
        process, inproc, startup = [], [], []
        code = None
        for _ in range(opts.rounds):
            start = time.perf_counter()
            done = subprocess.run(
                [cli, "check", str(policy), "--all-envs", "--format", "json"], capture_output=True, check=False
            )
            process.append(time.perf_counter() - start)
            code = done.returncode
            start = time.perf_counter()
            subprocess.run([cli, "--version"], capture_output=True, check=False)
            startup.append(time.perf_counter() - start)
            with contextlib.redirect_stdout(io.StringIO()):
                start = time.perf_counter()
                cli_main(["check", str(policy), "--all-envs", "--format", "json"])
                inproc.append(time.perf_counter() - start)
        findings = len(json.loads(done.stdout)["findings"])
        size_kb = policy.stat().st_size / 1024
    result = {
        "file_kib": round(size_kb),
        "exit_code": code,
        "findings": findings,
        "process_s": statistics.median(process),
        "in_process_s": statistics.median(inproc),
        "cli_startup_s": statistics.median(startup),
    }
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {size_kb:.0f} KiB policy, 1000 globs + 1000 exact, 5 environments"
    )
    print(
        f"check --all-envs, whole command: {result['process_s'] * 1000:.0f} ms median of {opts.rounds} (exit {code}, {findings} findings)"
    )
    print(
        f"  of which lint work in-process: {result['in_process_s'] * 1000:.0f} ms; `celery-policy --version` start-up: {result['cli_startup_s'] * 1000:.0f} ms"
    )
    save("check", result)


if __name__ == "__main__":
    main()
