"""The web console on a 100,000-record dead-letter stream: the first page, the groups, and the console's memory.

A private redis-server holds 100,000 records (tracebacks of ~1.5 kB, as real ones
are; 20 tasks, 3 reasons, 4 exceptions over 48 hours). A real ``celery-policy web``
process (uvicorn) serves them. Measured over HTTP:

- the first ``/dead-letters`` page of a cold console (the groups not yet counted);
- the time until the groups are counted (the background index), and warm pages after it;
- a filtered first page (``?task=svc3.*&reason=permanent``);
- the console's resident memory after counting (it keeps counts, not records);
- the baseline: reading the whole stream once, as ``dlq stats`` does (``store.iter``).

    .venv/bin/python benchmarks/bench_web.py [--records 100000]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import save  # noqa: E402
from benchmarks.bench_e2e import free_port, start_redis  # noqa: E402
from celery_policy.deadletter.record import DeadLetter  # noqa: E402
from celery_policy.deadletter.store import Filter, RedisStreamStore  # noqa: E402

TOKEN = "bench-" + "0123456789abcdef" * 2
TRACEBACK = (
    "Traceback (most recent call last):\n"
    + "".join(
        f'  File "/srv/app/svc/module_{n}.py", line {10 + n}, in handler_{n}\n    result = call_{n}(payload)\n'
        for n in range(14)
    )
    + "TimeoutError: gateway timed out after 30s\n"
)
EXCEPTIONS = ("builtins.TimeoutError", "builtins.ConnectionError", "builtins.ValueError", "proj.errors.RateLimited")
REASONS = ("exhausted", "permanent", "deadline")


def fill(store: RedisStreamStore, count: int) -> None:
    now = time.time()
    pipe = store.client.pipeline(transaction=False)
    for i in range(count):
        at = now - (count - i) * (48 * 3600 / count)  # oldest first, spread over 48 hours
        record = DeadLetter(
            task=f"svc{i % 20}.work",
            task_id=f"id-{i}",
            args=[i, {"order_id": f"o-{i}", "amount": i % 997}],
            kwargs={"attempt_key": f"k-{i}"},
            reason=REASONS[i % 3],  # type: ignore[arg-type]
            exc_type=EXCEPTIONS[i % 4],
            exc_message=f"gateway timed out after 30s (order o-{i})",
            traceback=TRACEBACK,
            attempts=1 + i % 5,
            first_failure=at - 60,
            last_failure=at,
            hostname=f"w{i % 8}@host",
            queue="celery",
            policy_source="policies/celery-policy.yaml:12 (defaults)",
        )
        pipe.xadd(store.stream, {"record": record.model_dump_json(exclude={"id"})})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def timed_get(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    answer = client.get(path)
    return time.perf_counter() - start, answer


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:  # noqa: PLR0915 - one measured run, step by step
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, url = start_redis(Path(tmp))
        console = None
        try:
            store = RedisStreamStore(url, "celery-policy:dead", max_length=opts.records * 2)
            start = time.perf_counter()
            fill(store, opts.records)
            fill_s = time.perf_counter() - start
            stream_mb = int(store.client.memory_usage(store.stream) or 0) / 1e6  # type: ignore[arg-type]

            start = time.perf_counter()
            whole = sum(1 for _ in store.iter(Filter()))
            whole_s = time.perf_counter() - start

            port = free_port()
            env = dict(os.environ, CELERY_POLICY_WEB_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
            console = subprocess.Popen(
                [sys.executable, "-m", "celery_policy.cli", "web", "--url", url, "--bind", f"127.0.0.1:{port}"],
                env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            client = httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
            )
            for _ in range(200):
                try:
                    client.get("/login")
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            rss_idle = rss_mb(console.pid)
            cold_s, cold = timed_get(client, "/dead-letters")
            assert cold.status_code == 200, cold.text[:300]
            assert cold.text.count('href="/dead-letters/1') == 50, "a full first page"
            start = time.perf_counter()
            while "Counting the stream" in client.get("/dead-letters").text:
                time.sleep(0.1)
            groups_s = time.perf_counter() - start + cold_s
            warm = [timed_get(client, "/dead-letters")[0] for _ in range(10)]
            filtered = [timed_get(client, "/dead-letters?task=svc3.*&reason=permanent")[0] for _ in range(5)]
            record_s = [
                timed_get(client, "/dead-letters/" + store.client.xrevrange(store.stream, count=1)[0][0].decode())[0]
                for _ in range(5)
            ]
            page = client.get("/dead-letters").text
            assert f"By hour · {opts.records} matching" in page, "the groups count every record"
            rss_after = rss_mb(console.pid)
        finally:
            if console is not None:
                os.killpg(console.pid, signal.SIGTERM)
                console.wait(10)
            redis_proc.terminate()
            redis_proc.wait(10)
    warm_s = statistics.median(warm)
    filtered_s = statistics.median(filtered)
    record_med = statistics.median(record_s)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {opts.records} records ({stream_mb:.0f} MB stream; filled in {fill_s:.1f}s)"
    )
    print(f"first /dead-letters page, cold console (groups not counted yet): {cold_s * 1000:.0f} ms")
    print(
        f"groups counted (background, whole stream): {groups_s:.2f} s; then pages with groups and chart: {warm_s * 1000:.0f} ms (median of 10)"
    )
    print(
        f"filtered first page ?task=svc3.*&reason=permanent: {filtered_s * 1000:.0f} ms; one record's page: {record_med * 1000:.0f} ms"
    )
    print(f"console memory: {rss_idle:.0f} MB at start, {rss_after:.0f} MB after counting {opts.records} records")
    print(f"baseline, reading the whole stream once (dlq stats, store.iter): {whole_s:.2f} s for {whole} records")
    save(
        "web",
        {
            "records": opts.records,
            "stream_mb": stream_mb,
            "first_page_cold_ms": cold_s * 1000,
            "groups_counted_s": groups_s,
            "page_with_groups_ms": warm_s * 1000,
            "filtered_page_ms": filtered_s * 1000,
            "record_page_ms": record_med * 1000,
            "console_rss_start_mb": rss_idle,
            "console_rss_after_mb": rss_after,
            "whole_stream_read_s": whole_s,
        },
    )


if __name__ == "__main__":
    main()
