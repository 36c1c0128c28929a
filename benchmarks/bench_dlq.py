"""Dead letters: `dlq replay` of 10,000 records (publish, then delete each) and `dlq list` with a
filter on a 100,000-record stream, on a private redis-server that is also the broker.

The baseline is what teams do by hand with plain Celery: a loop of `send_task` over the same
10,000 payloads (no store, nothing deleted). The ratio shows what safe replay costs.

    .venv/bin/python benchmarks/bench_dlq.py [--records 10000] [--stream 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import save  # noqa: E402
from benchmarks.bench_e2e import start_redis  # noqa: E402
from celery_policy.deadletter.record import DeadLetter  # noqa: E402
from celery_policy.deadletter.replay import celery_publisher, replay  # noqa: E402
from celery_policy.deadletter.store import Filter, RedisStreamStore  # noqa: E402


def record(i: int, now: float) -> DeadLetter:
    return DeadLetter(
        task="orders.charge" if i % 100 == 0 else f"svc{i % 7}.work",
        task_id=f"id-{i}",
        args=[i],
        kwargs={"order_id": f"o-{i}"},
        reason="exhausted",
        exc_type="builtins.TimeoutError",
        exc_message="gateway timed out",
        traceback="Traceback (most recent call last):\n  ...\nTimeoutError: gateway timed out\n",
        attempts=4,
        first_failure=now,
        last_failure=now,
        hostname="w1@host",
        queue="celery",
        policy_source="policies/celery-policy.yaml:12 (defaults)",
    )


def fill(store: RedisStreamStore, count: int) -> None:
    now = time.time()
    pipe = store.client.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(store.stream, {"record": record(i, now).model_dump_json(exclude={"id"})})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--stream", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200, help="records deleted per XDEL, as `dlq replay --batch N`")
    opts = parser.parse_args()
    from celery import Celery

    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_redis(Path(tmp))
        try:
            app = Celery("bench-dlq", broker=url)
            store = RedisStreamStore(url, "bench:dead", max_length=10_000_000)
            fill(store, opts.records)
            records = list(store.iter(Filter()))
            start = time.perf_counter()
            report = replay(store, records, celery_publisher(app), batch=opts.batch)
            replay_s = time.perf_counter() - start
            assert len(report.replayed) == opts.records and store.count() == 0, report.failed[:3]
            store.client.delete("celery")
            start = time.perf_counter()
            for r in records:
                app.send_task(r.task, args=r.args, kwargs=r.kwargs, queue=r.queue)
            baseline_s = time.perf_counter() - start
            store.client.delete("celery")
            fill(store, opts.stream)
            start = time.perf_counter()
            found = list(store.iter(Filter(task="orders.*"), limit=None))
            list_s = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait()
    result = {
        "records": opts.records,
        "batch": opts.batch,
        "replay_per_s": opts.records / replay_s,
        "send_task_loop_per_s": opts.records / baseline_s,
        "ratio": baseline_s / replay_s,
        "list_stream": opts.stream,
        "list_matches": len(found),
        "list_s": list_s,
    }
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(
        f"dlq replay of {opts.records} records: {result['replay_per_s']:.0f} records/s"
        f" (dlq replay --batch {opts.batch}: publish each, then XDEL per {opts.batch})"
    )
    print(
        f"plain Celery send_task loop, same payloads: {result['send_task_loop_per_s']:.0f} tasks/s; ratio {result['ratio']:.2f}"
    )
    print(f"dlq list --task 'orders.*' on a {opts.stream}-record stream: {list_s:.2f} s ({len(found)} matches)")
    save("dlq" if opts.batch == 200 else f"dlq-batch{opts.batch}", result)


if __name__ == "__main__":
    main()
