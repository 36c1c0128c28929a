"""End to end: a real redis-server, a real worker (solo and prefork -c 1), late ack, prefetch 1.

For each pool, plain Celery (options by decorator) and celery-policy (the same
options in YAML) drain N queued tasks, interleaved A B A B; the success path
and a path where 10% of tasks fail once with a transient error and are
retried at once. Reports median tasks/s, spread, and the ratio policy/plain.

    .venv/bin/python benchmarks/bench_e2e.py [--tasks 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._results import save  # first: it reads the commit at start

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
version: 1
defaults:
  retry: {on: [builtins.ConnectionError], max_retries: 3, backoff: {initial: 0, factor: 1, max: 0, jitter: none}}
  timeout: {soft: 300s, hard: 330s}
  ack: {late: true, reject_on_worker_lost: true}
worker: {prefetch_multiplier: 1, reliable_fetch: false}  # same transport as plain: measures the policy layer only
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is missing: run scripts/bootstrap.sh (or apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_worker(mode: str, pool: str, queue: str, url: str, policy: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, BENCH_MODE=mode, BENCH_BROKER_URL=url, BENCH_POLICY=str(policy), PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "celery", "-A", "benchmarks.e2e_app", "worker", "-P", pool, "-c", "1",
        "-Q", queue, "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-n", f"{mode}-{pool}@bench",
    ]  # fmt: skip
    handle = open(log, "ab")  # noqa: SIM115 - the worker writes to it until stopped
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop_all(workers: list[subprocess.Popen[bytes]], server: subprocess.Popen[bytes]) -> None:
    """Stop the workers (resuming any paused one first), then the redis-server."""
    for proc in workers:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in workers:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    server.terminate()
    server.wait()


def wait_ready(client: redis.Redis, app: Any, queue: str, timeout: float = 60) -> None:
    """A worker is consuming ``queue`` once a probe task ran."""
    client.set("bench:done", 0)
    app.send_task("bench.work", args=(-1, False), queue=queue)
    deadline = time.monotonic() + timeout
    while int(client.get("bench:done") or 0) < 1:
        if time.monotonic() > deadline:
            sys.exit(f"no worker consumed {queue} within {timeout:.0f}s")
        time.sleep(0.05)


def publish(app: Any, queue: str, count: int, fail_share: float) -> None:
    every = int(1 / fail_share) if fail_share else 0
    with app.producer_or_acquire() as producer:
        for i in range(count):
            app.send_task("bench.work", args=(i, bool(every and i % every == 0)), queue=queue, producer=producer)


def one_run(client: redis.Redis, app: Any, queue: str, pgid: int, count: int, fail_share: float) -> float:
    """Queue ``count`` tasks while the worker is paused (SIGSTOP), then time the drain."""
    client.set("bench:done", 0)
    os.killpg(pgid, signal.SIGSTOP)
    publish(app, queue, count, fail_share)
    start = time.perf_counter()
    os.killpg(pgid, signal.SIGCONT)
    while int(client.get("bench:done") or 0) < count:
        time.sleep(0.005)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pools", default="solo,prefork")
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from celery import Celery

    results: dict[str, Any] = {"tasks": opts.tasks, "rounds": opts.rounds, "runs": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        policy = tmp / "bench.yaml"
        policy.write_text(POLICY)
        server, url = start_redis(tmp)
        client = redis.Redis.from_url(url)
        producer_app = Celery("bench-producer", broker=url)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            for pool in opts.pools.split(","):
                procs = {}
                for mode in ("plain", "policy"):
                    queue = f"q-{mode}-{pool}"
                    procs[mode] = start_worker(mode, pool, queue, url, policy, tmp / f"{mode}-{pool}.log")
                    workers.append(procs[mode])
                for mode in ("plain", "policy"):
                    wait_ready(client, producer_app, f"q-{mode}-{pool}")
                time.sleep(1.0)
                for path, share in (("success", 0.0), ("10% transient", 0.1)):
                    for mode in ("plain", "policy"):
                        results["runs"].setdefault(f"{pool}/{path}/{mode}", [])
                    for _ in range(opts.rounds):
                        for mode in ("plain", "policy"):  # A B A B; the idle worker only waits on BRPOP
                            rate = one_run(client, producer_app, f"q-{mode}-{pool}", procs[mode].pid, opts.tasks, share)
                            results["runs"][f"{pool}/{path}/{mode}"].append(rate)
        finally:
            stop_all(workers, server)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {opts.tasks} tasks per run, {opts.rounds} rounds A B interleaved"
    )
    print(f"{'pool / path':<28}{'plain tasks/s':>16}{'policy tasks/s':>16}{'ratio':>8}")
    summary = {}
    for pool in opts.pools.split(","):
        for path in ("success", "10% transient"):
            plain = results["runs"][f"{pool}/{path}/plain"]
            pol = results["runs"][f"{pool}/{path}/policy"]
            ratio = statistics.median(pol) / statistics.median(plain)
            summary[f"{pool}/{path}"] = {"plain": plain, "policy": pol, "ratio": ratio}
            print(
                f"{pool + ' / ' + path:<28}{statistics.median(plain):>10.0f} ±{(max(plain) - min(plain)) / 2:<5.0f}"
                f"{statistics.median(pol):>10.0f} ±{(max(pol) - min(pol)) / 2:<5.0f}{ratio:>8.3f}"
            )

    save("e2e", {"tasks": opts.tasks, "rounds": opts.rounds, "results": summary})


if __name__ == "__main__":
    main()
