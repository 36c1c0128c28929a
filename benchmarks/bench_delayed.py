"""Delayed delivery on Redis: worker memory with long backoffs, and end-to-end throughput with it on vs off.

1. Parked retries. Tasks fail once and are retried after a 1 h backoff. Plain Celery
   (autoretry, late ack, prefetch 1) holds every retry as an ETA message in the worker;
   celery-policy with delayed delivery stores them in the broker's delayed set. For each
   worker (same run, same redis-server) the main process's VmRSS is read

   - cold: after one successful task, before any failure;
   - warm: after ``--warmup`` tasks (2,000) failed once and were retried at once
     (countdown 0) through the same failure path, so nothing is held;
   - after ``--first`` (1,000) and after ``--parked`` (20,000) retries were parked.

   It reports the growth from the warm baseline to N parked (the goal: < 30 MB for
   N = 20,000), the same from cold, the warm-up's own growth, and the slope per parked
   retry between the two parked counts; and where the retries are (``unacked`` for plain
   Celery, the delayed set for celery-policy). A control worker (celery-policy with
   ``gc.collect()`` after every task) runs the warm-up only: on Python 3.11+ the cold
   cost is reference cycles of the failure path (Celery's ``ExceptionInfo``, which copies
   every frame's ``co_positions``) waiting for the cyclic collector, and the allocator
   keeping that peak.
2. Throughput. The bench_e2e.py drain (late ack, prefetch 1, 10 % transient failures
   retried at once) with ``worker.delayed_delivery`` true vs false, rounds alternating
   A B A B, with the load average at each round. Goal: ratio of medians on/off >= 0.98.

Run it with the interpreter of the line to measure (the workers use the same one), e.g.
``CELERY_POLICY_BENCH_RESULTS=benchmarks/results/line-5.3 .nox/floors/bin/python benchmarks/bench_delayed.py``.

    .venv/bin/python benchmarks/bench_delayed.py [--parked 20000] [--first 1000] [--warmup 2000]
                                                  [--tasks 3000] [--rounds 9] [--pool solo]
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
from celery_policy.transport import delayed  # noqa: E402

POLICY = """
version: 1
defaults:
  retry: {{on: [builtins.ConnectionError], max_retries: 3, backoff: {{initial: {backoff}, factor: 1, max: {backoff},
          jitter: none}}}}
  timeout: {{soft: 300s, hard: 330s}}
  ack: {{late: true, reject_on_worker_lost: true}}
tasks:
  bench.work: {{retry: {{backoff: {{initial: 0, factor: 1, max: 0, jitter: none}}}}}}  # the warm-up: retried at once
worker: {{prefetch_multiplier: 1, reliable_fetch: true, delayed_delivery: {delayed}}}
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load() -> float:
    return round(os.getloadavg()[0], 2)


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


def _warm_up(client: redis.Redis, app: Any, queue: str, count: int, timeout: float) -> None:
    """``count`` tasks that fail once and are retried at once (countdown 0): the failure path, nothing held."""
    client.set("bench:done", 0)
    with app.producer_or_acquire() as producer:
        for i in range(count):
            app.send_task("bench.work", args=(i, True), queue=queue, producer=producer)
    deadline = time.monotonic() + timeout
    while int(client.get("bench:done") or 0) < count:
        if time.monotonic() > deadline:
            sys.exit(f"{queue}: only {client.get('bench:done')} of {count} warm-up tasks ran within {timeout:.0f}s")
        time.sleep(0.05)


def _settled_rss(client: redis.Redis, pid: int) -> tuple[int, int, int]:
    """(VmRSS kB, unacked, in delayed sets) once the counts stopped changing (plain Celery still receives retries)."""
    last: tuple[int, int] = (-1, -1)
    time.sleep(2.0)
    while True:
        now = (int(client.hlen("unacked")), sum(delayed.counts(client).values()))
        if now == last:
            return rss_kb(pid), now[0], now[1]
        last = now
        time.sleep(3.0)


def measure(client: redis.Redis, app: Any, queue: str, pid: int, opts: Any) -> dict[str, Any]:
    """Cold, warm (after the warm-up), after ``first`` and after ``parked`` parked retries, for one worker."""
    steps: dict[str, dict[str, Any]] = {}

    def point(name: str) -> int:
        rss, unacked, in_delayed = _settled_rss(client, pid)
        steps[name] = {"rss_mb": rss / 1024, "unacked": unacked, "in_delayed_sets": in_delayed, "load_1m": load()}
        return rss

    cold = point("cold")
    _warm_up(client, app, queue, opts.warmup, 900)
    warm = point("warm")
    start = time.perf_counter()
    _park_all(client, app, queue, opts.first, 900)
    first = point("first")
    _park_all(client, app, queue, opts.parked - opts.first, 1800)
    seconds = time.perf_counter() - start
    end = point("parked")
    held = steps["parked"]["unacked"] - steps["warm"]["unacked"]
    in_set = steps["parked"]["in_delayed_sets"] - steps["warm"]["in_delayed_sets"]
    return {
        "steps": steps,
        "warm_growth_mb": (end - warm) / 1024,
        "cold_growth_mb": (end - cold) / 1024,
        "warmup_growth_mb": (warm - cold) / 1024,
        "slope_kb_per_parked": (end - first) / (opts.parked - opts.first),
        "held_unacked": held,
        "in_delayed_set": in_set,
        "park_seconds": seconds,
    }


def control(client: redis.Redis, app: Any, queue: str, pid: int, opts: Any) -> dict[str, Any]:
    """The warm-up alone on a worker that collects garbage after every task."""
    cold, _, _ = _settled_rss(client, pid)
    _warm_up(client, app, queue, opts.warmup, 900)
    warm, _, _ = _settled_rss(client, pid)
    return {"warmup_growth_mb": (warm - cold) / 1024, "rss_cold_mb": cold / 1024, "load_1m": load()}


def throughput(opts: Any, tmp: Path) -> dict[str, Any]:
    """The drain rate with delayed delivery on and off, rounds alternating (a fresh redis-server)."""
    from celery import Celery

    runs: dict[str, list[float]] = {"on": [], "off": []}
    loads: list[float] = []
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
        for i in range(opts.rounds):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")  # A B B A: neither always goes first
            for mode in order:
                runs[mode].append(one_run(client, producer_app, f"q-{mode}", procs[mode].pid, opts.tasks, 0.1))
            loads.append(load())
    finally:
        stop_all(list(procs.values()), server)
    on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
    pairs = [a / b for a, b in zip(runs["on"], runs["off"], strict=True)]
    return {"tasks": opts.tasks, "rounds": opts.rounds, "on": runs["on"], "off": runs["off"], "ratio": on / off,
            "round_ratios": pairs, "load_1m_per_round": loads}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parked", type=int, default=20000)
    parser.add_argument("--first", type=int, default=1000, help="the first parked count (the slope is from here)")
    parser.add_argument("--warmup", type=int, default=2000, help="failing tasks retried at once before measuring")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--pool", default="solo")
    parser.add_argument("--skip-throughput", action="store_true")
    opts = parser.parse_args()
    opts.first = min(opts.first, opts.parked // 2)
    from celery import Celery

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
            os.environ["BENCH_GC_EACH_TASK"] = "1"  # read by the control worker at start (benchmarks/e2e_app.py)
            try:
                collecting = start_worker("policy", opts.pool, "q-control", url, tmp / "park.yaml", tmp / "ctl.log")
            finally:
                del os.environ["BENCH_GC_EACH_TASK"]
            workers += [plain, policy, collecting]
            for queue in ("q-park-plain", "q-park-policy", "q-control"):
                wait_ready(client, producer_app, queue)
            parked["plain Celery"] = measure(client, producer_app, "q-park-plain", plain.pid, opts)
            parked["celery-policy"] = measure(client, producer_app, "q-park-policy", policy.pid, opts)
            gc_control = control(client, producer_app, "q-control", collecting.pid, opts)
        finally:
            stop_all(workers, server)
        runs = throughput(opts, tmp) if not opts.skip_throughput else None
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, pool {opts.pool}, load {load():.2f}")
    print(f"{opts.parked} retries parked with a 1 h backoff, after {opts.warmup} failures retried at once:")
    print(f"{'':<16}{'warm MB':>9}{'cold MB':>9}{'warm-up MB':>12}{'KB/parked':>11}{'unacked':>9}{'delayed set':>13}")
    for name, row in parked.items():
        print(f"{name:<16}{row['warm_growth_mb']:>+9.1f}{row['cold_growth_mb']:>+9.1f}{row['warmup_growth_mb']:>+12.1f}"
              f"{row['slope_kb_per_parked']:>11.2f}{row['held_unacked']:>9}{row['in_delayed_set']:>13}")  # fmt: skip
    print(f"control, gc.collect() after every task: warm-up growth {gc_control['warmup_growth_mb']:+.1f} MB")
    if runs is not None:
        on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
        print(f"throughput, {opts.tasks} tasks x {opts.rounds} rounds, 10 % transient: on {on:.0f}/s, off {off:.0f}/s,"
              f" ratio {runs['ratio']:.3f}, per-round ratios {min(runs['round_ratios']):.2f}-"
              f"{max(runs['round_ratios']):.2f}, load {min(runs['load_1m_per_round'])}-{max(runs['load_1m_per_round'])}")  # fmt: skip
    save("delayed", {"parked": opts.parked, "first": opts.first, "warmup": opts.warmup, "pool": opts.pool,
                     "parked_results": parked, "gc_control": gc_control, "throughput": runs})  # fmt: skip


if __name__ == "__main__":
    main()
