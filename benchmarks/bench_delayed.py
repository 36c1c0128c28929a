"""Delayed delivery on Redis: worker memory with long backoffs, and end-to-end throughput with it on vs off.

1. Parked retries. N tasks each fail once and are retried after a 1 h backoff. Plain
   Celery (autoretry, late ack, prefetch 1) holds every retry as an ETA message in the
   worker; celery-policy with delayed delivery stores them in the broker's delayed set.
   Reports each worker's main-process RSS growth (VmRSS before publishing, and once all N
   first attempts ran and the worker settled) and where the retries are (``unacked`` for
   plain Celery, the delayed set for celery-policy). Goal: growth < 30 MB for N = 20,000.
2. Throughput. The bench_e2e.py drain (late ack, prefetch 1, 10 % transient failures
   retried at once) with ``worker.delayed_delivery`` true vs false, rounds interleaved.
   Goal: ratio on/off >= 0.98.

    .venv/bin/python benchmarks/bench_delayed.py [--parked 20000] [--tasks 5000] [--rounds 5] [--pool solo]
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

from benchmarks.bench_e2e import one_run, start_redis, start_worker, stop_all, wait_ready  # noqa: E402

POLICY = """
version: 1
defaults:
  retry: {{on: [builtins.ConnectionError], max_retries: 3, backoff: {{initial: {backoff}, factor: 1, max: {backoff},
          jitter: none}}}}
  timeout: {{soft: 300s, hard: 330s}}
  ack: {{late: true, reject_on_worker_lost: true}}
worker: {{prefetch_multiplier: 1, reliable_fetch: true, delayed_delivery: {delayed}}}
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _park_all(client: redis.Redis, app: Any, queue: str, count: int, timeout: float) -> None:
    client.set("bench:parked", 0)
    with app.producer_or_acquire() as producer:
        for i in range(count):
            app.send_task("bench.park", args=(i,), queue=queue, producer=producer)
    deadline = time.monotonic() + timeout
    while int(client.get("bench:parked") or 0) < count:
        if time.monotonic() > deadline:
            sys.exit(f"{queue}: only {client.get('bench:parked')} of {count} parked within {timeout:.0f}s")
        time.sleep(0.05)


def park(client: redis.Redis, app: Any, queue: str, pid: int, count: int, timeout: float) -> dict[str, Any]:
    """Publish ``count`` tasks that fail once; return the worker's RSS growth once all of them were parked.

    A warm-up of 200 parked tasks first, so the growth measured is per parked retry, not the first
    failure's one-off costs (imports, traceback machinery, the publishing connection).
    """
    _park_all(client, app, queue, 200, timeout)
    time.sleep(2.0)
    before = rss_kb(pid)
    start = time.perf_counter()
    _park_all(client, app, queue, count, timeout)
    seconds = time.perf_counter() - start
    # settle: the retries are published; plain Celery still receives them (into its ETA timers) for a while
    last: tuple[int, int] = (-1, -1)
    while True:
        from celery_policy.transport import delayed

        now = (int(client.hlen("unacked")), sum(delayed.counts(client).values()))
        if now == last:
            break
        last = now
        time.sleep(3.0)
    after = rss_kb(pid)
    return {"rss_before_mb": before / 1024, "rss_after_mb": after / 1024, "growth_mb": (after - before) / 1024,
            "seconds": seconds}  # fmt: skip


def baseline(opts: Any) -> None:
    from celery import Celery

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server, url = start_redis(tmp)
        client = redis.Redis.from_url(url)
        producer_app = Celery("bench-producer", broker=url)
        (tmp / "park.yaml").write_text(POLICY.format(backoff="1h", delayed="true"))
        os.environ["BENCH_PARK_S"] = "0"  # read by the worker (benchmarks/e2e_app.py)
        worker = start_worker("plain", opts.pool, "q-base", url, tmp / "park.yaml", tmp / "base.log")
        try:
            wait_ready(client, producer_app, "q-base")
            row = park(client, producer_app, "q-base", worker.pid, opts.parked, 900)
        finally:
            stop_all([worker], server)
    print(f"plain Celery, {opts.parked} retries run at once (nothing held): RSS growth {row['growth_mb']:.1f} MB")
    from benchmarks._results import save

    save("delayed-baseline", {"parked": opts.parked, "pool": opts.pool, "plain Celery, countdown 0": row})


def throughput(opts: Any, tmp: Path) -> dict[str, list[float]]:
    """The drain rate with delayed delivery on and off, rounds interleaved (a fresh redis-server)."""
    from celery import Celery

    runs: dict[str, list[float]] = {"on": [], "off": []}
    server, url = start_redis(tmp)
    client = redis.Redis.from_url(url)
    producer_app = Celery("bench-producer", broker=url)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for mode in ("on", "off"):
            path = tmp / f"{mode}.yaml"
            path.write_text(POLICY.format(backoff=0, delayed="true" if mode == "on" else "false"))
            procs[mode] = start_worker("policy", opts.pool, f"q-{mode}", url, path, tmp / f"{mode}.log")
        for mode in procs:
            wait_ready(client, producer_app, f"q-{mode}")
        time.sleep(1.0)
        for _ in range(opts.rounds):
            for mode in ("on", "off"):  # A B A B
                runs[mode].append(one_run(client, producer_app, f"q-{mode}", procs[mode].pid, opts.tasks, 0.1))
    finally:
        stop_all(list(procs.values()), server)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parked", type=int, default=20000)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool", default="solo")
    parser.add_argument("--baseline", action="store_true", help="only plain Celery retrying at once (see above)")
    opts = parser.parse_args()
    if opts.baseline:
        baseline(opts)
        return
    from celery import Celery

    from celery_policy.transport import delayed

    parked: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server, url = start_redis(tmp)
        client = redis.Redis.from_url(url)
        producer_app = Celery("bench-producer", broker=url)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            # 1. parked retries: plain Celery and celery-policy, each on its own queue, same run
            (tmp / "park.yaml").write_text(POLICY.format(backoff="1h", delayed="true"))
            plain = start_worker("plain", opts.pool, "q-park-plain", url, tmp / "park.yaml", tmp / "park-plain.log")
            policy = start_worker("policy", opts.pool, "q-park-policy", url, tmp / "park.yaml", tmp / "park-pol.log")
            workers += [plain, policy]
            wait_ready(client, producer_app, "q-park-plain")
            wait_ready(client, producer_app, "q-park-policy")
            parked["plain Celery"] = park(client, producer_app, "q-park-plain", plain.pid, opts.parked, 900)
            parked["plain Celery"]["held_unacked"] = int(client.hlen("unacked")) - 200  # less the warm-up
            parked["celery-policy"] = park(client, producer_app, "q-park-policy", policy.pid, opts.parked, 900)
            parked["celery-policy"]["in_delayed_set"] = delayed.counts(client).get("q-park-policy", 0) - 200
            held = int(client.hlen("unacked")) - parked["plain Celery"]["held_unacked"] - 200
            parked["celery-policy"]["held_unacked"] = held
        finally:
            stop_all(workers, server)
        runs = throughput(opts, tmp)
    ratio = statistics.median(runs["on"]) / statistics.median(runs["off"])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, pool {opts.pool}, load {os.getloadavg()[0]:.2f}")
    print(f"{opts.parked} retries parked with a 1 h backoff:")
    print(f"{'':<16}{'RSS growth MB':>15}{'held unacked':>14}{'in delayed set':>16}")
    for name, row in parked.items():
        print(f"{name:<16}{row['growth_mb']:>15.1f}{row['held_unacked']:>14}{row.get('in_delayed_set', 0):>16}")
    on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
    print(f"throughput, {opts.tasks} tasks x {opts.rounds} rounds, 10 % transient: on {on:.0f}/s, off {off:.0f}/s, "
          f"ratio {ratio:.3f}")  # fmt: skip
    from benchmarks._results import save

    save("delayed", {"parked": opts.parked, "pool": opts.pool, "parked_results": parked,
                     "throughput": {"tasks": opts.tasks, "rounds": opts.rounds, "on": runs["on"], "off": runs["off"],
                                    "ratio": ratio}})  # fmt: skip


if __name__ == "__main__":
    main()
