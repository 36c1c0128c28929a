"""Dead letters: `dlq replay` of 10,000 records (publish, then delete each) and `dlq list` with a
filter on a 100,000-record stream, on a private redis-server that is also the broker.

The baseline is what teams do by hand with plain Celery: a loop of `send_task` over the same
10,000 payloads (no store, nothing deleted). The ratio shows what safe replay costs.

Then the pacing of a bulk replay: `--rate 200/s` over 5,000 records (the achieved rate, and
the largest count published in any one second), and `--spread 60s` (the replayed messages'
ETAs, read back from the broker: their span and how evenly they fill the window).

    .venv/bin/python benchmarks/bench_dlq.py [--records 10000] [--stream 100000] [--rated 5000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import save  # noqa: E402
from benchmarks.bench_e2e import start_redis  # noqa: E402
from celery_policy.deadletter.fastpath import RedisPipelinePublisher  # noqa: E402
from celery_policy.deadletter.record import DeadLetter  # noqa: E402
from celery_policy.deadletter.replay import Outgoing, celery_publisher, replay, replay_dead_letters  # noqa: E402
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
    parser.add_argument("--rated", type=int, default=5_000, help="records of the --rate 200/s run")
    parser.add_argument("--spread-records", type=int, default=2_000, help="records of the --spread 60s run")
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
            report = replay(store, records, celery_publisher(app), batch=opts.batch, log=_quiet())
            replay_s = time.perf_counter() - start
            assert len(report.replayed) == opts.records and store.count() == 0, report.failed[:3]
            store.client.delete("celery")
            fill(store, opts.records)
            records = list(store.iter(Filter()))
            start = time.perf_counter()
            report = replay(store, records, RedisPipelinePublisher(app), batch=500, log=_quiet())
            pipeline_s = time.perf_counter() - start
            assert len(report.replayed) == opts.records and store.count() == 0, report.failed[:3]
            assert store.client.llen("celery") == opts.records
            store.client.delete("celery")
            start = time.perf_counter()
            for r in records:
                app.send_task(r.task, args=r.args, kwargs=r.kwargs, queue=r.queue)
            baseline_s = time.perf_counter() - start
            store.client.delete("celery")
            rated = measure_rate(app, store, opts.rated, "200/s")
            spread = measure_spread(app, store, opts.spread_records, 60.0)
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
        "pipeline_replay_per_s": opts.records / pipeline_s,
        "send_task_loop_per_s": opts.records / baseline_s,
        "ratio": baseline_s / replay_s,
        "list_stream": opts.stream,
        "list_matches": len(found),
        "list_s": list_s,
        "rate_200": rated,
        "spread_60s": spread,
    }
    print_figures(result)
    save("dlq" if opts.batch == 200 else f"dlq-batch{opts.batch}", result)


def print_figures(result: dict[str, Any]) -> None:
    """Print one run's figures (what save() writes)."""
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(
        f"dlq replay of {result['records']} records: {result['replay_per_s']:.0f} records/s"
        f" (dlq replay --batch {result['batch']}: publish each, then XDEL per {result['batch']})"
    )
    print(
        f"plain Celery send_task loop, same payloads: {result['send_task_loop_per_s']:.0f} tasks/s; ratio {result['ratio']:.2f}"
    )
    print(
        f"dlq replay --batch 500 (pipelined, the default on Redis): {result['pipeline_replay_per_s']:.0f} records/s, "
        f"{result['pipeline_replay_per_s'] / result['send_task_loop_per_s']:.1f}x the send_task loop"
    )
    print(
        f"dlq list --task 'orders.*' on a {result['list_stream']}-record stream: {result['list_s']:.2f} s ({result['list_matches']} matches)"
    )
    print(
        f"dlq replay --rate 200/s of {result['rate_200']['records']} records: {result['rate_200']['achieved_per_s']:.1f}/s "
        f"({result['rate_200']['deviation_pct']:+.1f} %), busiest second {result['rate_200']['max_in_one_s']}"
    )
    print(
        f"dlq replay --spread 60s of {result['spread_60s']['records']} records: ETAs over {result['spread_60s']['span_s']:.1f} s, "
        f"per 6 s decile {result['spread_60s']['min_decile']}..{result['spread_60s']['max_decile']} (even: {int(str(result['spread_60s']['records'])) // 10})"
    )


class _Timed:
    """The pipelined publisher (the CLI's default on Redis), noting when each replay was confirmed."""

    def __init__(self, inner: RedisPipelinePublisher) -> None:
        self.inner = inner
        self.times: list[float] = []

    def publish_many(self, items: list[Outgoing]) -> list[BaseException | None]:
        errors = self.inner.publish_many(items)
        now = time.monotonic()
        self.times.extend(now for _ in items)
        return errors

    def __call__(self, record: DeadLetter, task_id: str, **options: Any) -> None:
        self.inner(record, task_id, **options)
        self.times.append(time.monotonic())

    def close(self) -> None:
        self.inner.close()


def _quiet() -> Any:
    import structlog

    def drop(*_: Any) -> Any:
        raise structlog.DropEvent

    return structlog.wrap_logger(None, processors=[drop])


def measure_rate(app: Any, store: RedisStreamStore, count: int, rate: str) -> dict[str, Any]:
    """Replay ``count`` records at ``rate``: the achieved rate and the busiest one-second window."""
    fill(store, count)
    publish = _Timed(RedisPipelinePublisher(app))
    start = time.monotonic()
    report = replay_dead_letters(store, publish, rate=rate, batch=200, log=_quiet())
    elapsed = time.monotonic() - start
    assert len(report.replayed) == count and store.count() == 0, report.failed[:3]
    store.client.delete("celery")
    times = publish.times
    busiest = 0
    j = 0
    for i, t in enumerate(times):  # the most publishes inside any window of one second
        while times[j] < t - 1.0:
            j += 1
        busiest = max(busiest, i - j + 1)
    target = float(rate.split("/", maxsplit=1)[0])
    achieved = (count - 1) / max(times[-1] - times[0], 1e-9)
    return {
        "records": count,
        "rate": rate,
        "elapsed_s": elapsed,
        "achieved_per_s": achieved,
        "deviation_pct": (achieved - target) / target * 100,
        "max_in_one_s": busiest,
    }


def measure_spread(app: Any, store: RedisStreamStore, count: int, window_s: float) -> dict[str, Any]:
    """Replay ``count`` records with ``--spread``; read the ETAs of the published messages back from the queue."""
    import base64
    import datetime as dt
    import json

    fill(store, count)
    start = time.time()
    report = replay_dead_letters(store, RedisPipelinePublisher(app), spread=window_s, batch=200, log=_quiet())
    assert len(report.replayed) == count and store.count() == 0, report.failed[:3]
    etas = []
    for raw in store.client.lrange("celery", 0, -1):
        headers = json.loads(raw)["headers"]
        etas.append(dt.datetime.fromisoformat(headers["eta"]).timestamp() - start)
    store.client.delete("celery")
    del base64
    origin = min(etas)  # the window starts when the replay started, after reading the records
    deciles = [0] * 10
    for eta in etas:
        deciles[min(9, max(0, int((eta - origin) / (window_s / 10))))] += 1
    return {
        "records": count,
        "window_s": window_s,
        "first_eta_s": min(etas),
        "last_eta_s": max(etas),
        "span_s": max(etas) - min(etas),
        "deciles": deciles,
        "min_decile": min(deciles),
        "max_decile": max(deciles),
    }


if __name__ == "__main__":
    main()
