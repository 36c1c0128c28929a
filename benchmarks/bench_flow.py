"""Flow control against plain Celery, real workers and a real redis-server, both sides in the same run.

outage   The payments API fails every call for 30 s while 400 charge tasks run on 2 prefork workers
         (-c 2) per side: plain Celery's autoretry_for vs a celery-policy breaker, the same retries and
         backoff. Counts the calls made while the API is down, whether all 400 succeed afterwards,
         dead letters, and how long after recovery the breaker closes.
limit    400 tasks through a limit of 40/s on 2 workers -c 2: celery-policy's shared limit vs plain
         Celery's per-task rate_limit="40/s" (per worker); the rate over the steady part (first and last
         second dropped), per second.
overhead The success path of a task with a closed breaker vs the same task without one, end to end
         (prefork -c 1, queue drained while timed, A B interleaved).

    nice .venv/bin/python benchmarks/bench_flow.py [--only outage,limit,overhead]
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

from benchmarks.bench_e2e import start_redis, stop_all  # noqa: E402

OPEN_FOR_S = 5.0
OUTAGE_S = 30.0
TASKS = 400

POLICY = """
version: 1
errors:
  transient: [builtins.ConnectionError]
defaults:
  retry: {on: [transient], max_retries: 10, backoff: {initial: 1s, factor: 2, max: 16s, jitter: full}}
  dead_letter: {enabled: true}
breakers:
  payments: {failure_rate: 50%, min_calls: 10, window: 10s, open_for: 5s, half_open_calls: 2}
limits:
  payments_api: {rate: 40/s, burst: 5}
tasks:
  bench.charge: {breaker: payments}
  bench.sync: {limit: payments_api}
worker: {prefetch_multiplier: 1, reliable_fetch: false}
dead_letter_store: {stream: bench:dead}
"""
_TASKS = "tasks:\n  bench.charge: {breaker: payments}\n  bench.sync: {limit: payments_api}\n"
NO_BREAKER = POLICY.replace(_TASKS, "tasks:\n  bench.work: {}\n")
WITH_BREAKER = POLICY.replace(_TASKS, "tasks:\n  bench.work: {breaker: payments}\n")
assert POLICY not in (NO_BREAKER, WITH_BREAKER)


def worker(mode: str, queue: str, url: str, policy: Path, log: Path, name: str, concurrency: int) -> Any:
    env = dict(os.environ, BENCH_MODE=mode, BENCH_BROKER_URL=url, BENCH_POLICY=str(policy), PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "celery", "-A", "benchmarks.flow_app", "worker", "-P", "prefork", "-c", str(concurrency),
        "-Q", queue, "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-n", f"{name}@bench",
    ]  # fmt: skip
    handle = open(log, "ab")  # noqa: SIM115 - the worker writes to it until stopped
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def wait_consuming(client: redis.Redis, app: Any, queue: str, mode: str, timeout: float = 90) -> None:
    before = int(client.get(f"work:{mode}") or 0)
    app.send_task("bench.work", args=(-1,), queue=queue)
    deadline = time.monotonic() + timeout
    while int(client.get(f"work:{mode}") or 0) <= before:
        if time.monotonic() > deadline:
            sys.exit(f"no worker consumed {queue} within {timeout:.0f}s")
        time.sleep(0.05)


def breaker_state(client: redis.Redis) -> str:
    value = client.hget("celery-policy:flow:breaker:{payments}", "state")
    if isinstance(value, bytes):
        return value.decode()
    return str(value) if value else "closed"


def outage(tmp: Path, url: str, client: redis.Redis, app: Any) -> dict[str, Any]:
    policy = tmp / "outage.yaml"
    policy.write_text(POLICY)
    procs = []
    for mode in ("plain", "policy"):
        for n in (1, 2):
            procs.append(worker(mode, f"charge-{mode}", url, policy, tmp / f"o-{mode}{n}.log", f"{mode}{n}", 2))
    try:
        for mode in ("plain", "policy"):
            wait_consuming(client, app, f"charge-{mode}", mode)
        time.sleep(2.0)
        client.set("dep:down", 1, px=int(OUTAGE_S * 1000))
        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            for i in range(TASKS):
                for mode in ("plain", "policy"):
                    app.send_task("bench.charge", args=(i,), queue=f"charge-{mode}", producer=producer)
        states: list[tuple[float, str]] = []
        while client.exists("dep:down"):
            states.append((time.monotonic() - started, breaker_state(client)))
            time.sleep(0.05)
        recovered = time.monotonic()
        closed_after = None
        deadline = recovered + 240
        while time.monotonic() < deadline:
            if closed_after is None and breaker_state(client) == "closed":
                closed_after = time.monotonic() - recovered
            finished = all(
                int(client.get(f"done:{m}") or 0) + int(client.get(f"failed:{m}") or 0) >= TASKS
                for m in ("plain", "policy")
            )
            if finished and closed_after is not None:
                break
            time.sleep(0.05)
        out: dict[str, Any] = {"outage_s": OUTAGE_S, "tasks": TASKS, "open_for_s": OPEN_FOR_S}
        for mode in ("plain", "policy"):
            out[mode] = {
                "calls_while_down": int(client.get(f"calls_down:{mode}") or 0),
                "calls_after": int(client.get(f"calls_up:{mode}") or 0),
                "succeeded": int(client.get(f"done:{mode}") or 0),
                "failed": int(client.get(f"failed:{mode}") or 0),
            }
        out["policy"]["dead_lettered"] = int(client.xlen("bench:dead")) if client.exists("bench:dead") else 0
        out["breaker_closed_after_recovery_s"] = closed_after
        out["breaker_open_share_of_outage"] = (
            sum(1 for _, s in states if s != "closed") / len(states) if states else None
        )
        plain_calls = out["plain"]["calls_while_down"]
        out["calls_ratio"] = out["policy"]["calls_while_down"] / plain_calls if plain_calls else None
        return out
    finally:
        stop_workers(procs)


def limit(tmp: Path, url: str, client: redis.Redis, app: Any, plain_cap_s: float) -> dict[str, Any]:
    policy = tmp / "limit.yaml"
    policy.write_text(POLICY)
    out: dict[str, Any] = {"tasks": TASKS, "rate": "40/s", "workers": "2 x prefork -c 2"}
    for mode in ("policy", "plain"):
        procs = [worker(mode, f"sync-{mode}", url, policy, tmp / f"l-{mode}{n}.log", f"s{mode}{n}", 2) for n in (1, 2)]
        try:
            wait_consuming(client, app, f"sync-{mode}", mode)
            time.sleep(2.0)
            client.delete(f"ran:{mode}")
            started = time.time()
            with app.producer_or_acquire() as producer:
                for i in range(TASKS):
                    app.send_task("bench.sync", args=(i,), queue=f"sync-{mode}", producer=producer)
            cap = started + (plain_cap_s if mode == "plain" else 120.0)
            while client.llen(f"ran:{mode}") < TASKS and time.time() < cap:
                time.sleep(0.05)
            times = sorted(float(t) for t in client.lrange(f"ran:{mode}", 0, -1))
            out[mode] = _rates(times, started, finished=len(times) >= TASKS)
        finally:
            stop_workers(procs)
    return out


def _rates(times: list[float], started: float, *, finished: bool) -> dict[str, Any]:
    if len(times) < 2:
        return {"ran": len(times), "finished": finished}
    first = times[0]
    seconds = [sum(1 for t in times if first + k <= t < first + k + 1) for k in range(int(times[-1] - first) + 1)]
    steady = seconds[1:-1] if len(seconds) > 2 else seconds
    steady_times = [t for t in times if first + 1 <= t < first + 1 + len(steady)]
    return {
        "ran": len(times),
        "finished": finished,
        "wall_s": times[-1] - started,
        "overall_per_s": (len(times) - 1) / (times[-1] - first),
        "steady_per_s": len(steady_times) / len(steady) if steady else None,
        "steady_seconds": steady,
        "first_100_per_s": 99 / (times[99] - first) if len(times) >= 100 else None,
    }


def overhead(tmp: Path, url: str, client: redis.Redis, app: Any, count: int, rounds: int) -> dict[str, Any]:
    import signal

    runs: dict[str, list[float]] = {"no_breaker": [], "closed_breaker": []}
    procs = {}
    for label, text in (("no_breaker", NO_BREAKER), ("closed_breaker", WITH_BREAKER)):
        path = tmp / f"{label}.yaml"
        path.write_text(text)
        procs[label] = worker("policy", f"work-{label}", url, path, tmp / f"w-{label}.log", f"w{label}", 1)
    try:
        for label in runs:
            wait_consuming(client, app, f"work-{label}", "policy")
        time.sleep(1.0)
        for _ in range(rounds):
            for label, samples in runs.items():  # A B A B; the idle worker only waits on BRPOP
                pgid = procs[label].pid
                before = int(client.get("work:policy") or 0)
                os.killpg(pgid, signal.SIGSTOP)
                with app.producer_or_acquire() as producer:
                    for i in range(count):
                        app.send_task("bench.work", args=(i,), queue=f"work-{label}", producer=producer)
                start = time.perf_counter()
                os.killpg(pgid, signal.SIGCONT)
                while int(client.get("work:policy") or 0) < before + count:
                    time.sleep(0.005)
                samples.append(count / (time.perf_counter() - start))
    finally:
        stop_workers(list(procs.values()))
    ratio = statistics.median(runs["closed_breaker"]) / statistics.median(runs["no_breaker"])
    return {"tasks": count, "rounds": rounds, "runs": runs, "ratio": ratio}


def stop_workers(procs: list[Any]) -> None:
    """stop_all() of bench_e2e without its redis-server, which stays up between scenarios."""

    class _KeepServer:
        def terminate(self) -> None:
            return None

        def wait(self) -> None:
            return None

    stop_all(procs, _KeepServer())  # type: ignore[arg-type]  # only terminate() and wait() are called


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="outage,limit,overhead")
    parser.add_argument("--plain-limit-cap", type=float, default=45.0, help="seconds plain rate_limit may run")
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per overhead run")
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    from celery import Celery

    wanted = opts.only.split(",")
    results: dict[str, Any] = {"load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server, url = start_redis(tmp)
        client = redis.Redis.from_url(url)
        app = Celery("bench-producer", broker=url)
        try:
            if "outage" in wanted:
                results["outage"] = outage(tmp, url, client, app)
                print("outage", results["outage"], flush=True)
            if "limit" in wanted:
                results["limit"] = limit(tmp, url, client, app, opts.plain_limit_cap)
                print("limit", results["limit"], flush=True)
            if "overhead" in wanted:
                results["overhead"] = overhead(tmp, url, client, app, opts.tasks, opts.rounds)
                print("overhead", results["overhead"], flush=True)
        finally:
            server.terminate()
            server.wait()
    results["load_average_after"] = os.getloadavg()
    from benchmarks._results import save

    print(save("flow", results))


if __name__ == "__main__":
    main()
