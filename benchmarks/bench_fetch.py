"""Reliable fetch vs plain kombu fetch, end to end: a real redis-server and real workers, late ack, prefetch 1.

The same app and policy (benchmarks/e2e_app.py in policy mode) with
``worker.reliable_fetch: false`` (kombu's BRPOP) and ``true`` (the atomic take
of celery_policy.transport.redis). Each round queues N tasks while the worker
is stopped, then times the drain; runs interleave A B A B. Reports median
tasks/s and the ratio reliable/plain (goal: >= 0.95).

    .venv/bin/python benchmarks/bench_fetch.py [--tasks 5000] [--rounds 5] [--pools solo,prefork]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._results import save  # noqa: E402  # first: it reads the commit at start
from benchmarks.bench_e2e import one_run, start_redis, start_worker, stop_all, wait_ready  # noqa: E402

POLICY = """
version: 1
defaults:
  retry: {{on: [builtins.ConnectionError], max_retries: 3, backoff: {{initial: 0, factor: 1, max: 0, jitter: none}}}}
  timeout: {{soft: 300s, hard: 330s}}
  ack: {{late: true, reject_on_worker_lost: true}}
worker: {{prefetch_multiplier: 1, reliable_fetch: {reliable}}}
"""
MODES = ("plain", "reliable")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pools", default="solo,prefork")
    opts = parser.parse_args()
    from celery import Celery

    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server, url = start_redis(tmp)
        client = redis.Redis.from_url(url)
        producer_app = Celery("bench-producer", broker=url)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            for pool in opts.pools.split(","):
                procs: dict[str, subprocess.Popen[bytes]] = {}
                for mode in MODES:
                    policy = tmp / f"{mode}.yaml"
                    policy.write_text(POLICY.format(reliable="true" if mode == "reliable" else "false"))
                    queue = f"q-{mode}-{pool}"
                    procs[mode] = start_worker("policy", pool, queue, url, policy, tmp / f"{mode}-{pool}.log")
                    workers.append(procs[mode])
                for mode in MODES:
                    wait_ready(client, producer_app, f"q-{mode}-{pool}")
                time.sleep(1.0)
                for _ in range(opts.rounds):
                    for mode in MODES:  # A B A B
                        rate = one_run(client, producer_app, f"q-{mode}-{pool}", procs[mode].pid, opts.tasks, 0.0)
                        runs.setdefault(f"{pool}/{mode}", []).append(rate)
        finally:
            stop_all(workers, server)
    cores = os.cpu_count()
    print(f"python {sys.version.split()[0]}, {cores} cores, {opts.tasks} tasks/run, {opts.rounds} rounds interleaved")
    print(f"{'pool':<10}{'plain tasks/s':>18}{'reliable tasks/s':>20}{'ratio':>8}")
    summary: dict[str, Any] = {}
    for pool in opts.pools.split(","):
        plain, reliable = runs[f"{pool}/plain"], runs[f"{pool}/reliable"]
        ratio = statistics.median(reliable) / statistics.median(plain)
        summary[pool] = {"plain": plain, "reliable": reliable, "ratio": ratio}
        print(
            f"{pool:<10}{statistics.median(plain):>12.0f} ±{(max(plain) - min(plain)) / 2:<5.0f}"
            f"{statistics.median(reliable):>14.0f} ±{(max(reliable) - min(reliable)) / 2:<5.0f}{ratio:>8.3f}"
        )

    save("fetch", {"tasks": opts.tasks, "rounds": opts.rounds, "results": summary})


if __name__ == "__main__":
    main()
