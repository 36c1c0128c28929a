"""Per-call cost of the policy layer on the worker's hot path (success), against plain Celery.

Both apps run the same body through Celery's own tracer (``build_tracer``, as
the worker does after ``setup_worker_optimizations``). The plain app sets the
same options by decorator (retries, backoff, time limits, late ack); the policy
app sets them in YAML. Rounds alternate A B A B to cancel machine noise; the
report gives medians and the ratio.

    .venv/bin/python benchmarks/bench_overhead.py [--calls 200000] [--rounds 7]
    .venv/bin/python benchmarks/bench_overhead.py --variant no-redelivery
    .venv/bin/python benchmarks/bench_overhead.py --variant idempotency --calls 20000
    .venv/bin/python benchmarks/bench_overhead.py --breaker   # a closed circuit breaker vs none

Variants of the policy (the plain app is the same in each):
- ``full`` (default): retries, time limits, late ack with ``max_redeliveries``, dead letters, hooks
  (results/overhead.json);
- ``no-redelivery``: the same without ``ack.max_redeliveries`` (results/overhead-no-redelivery.json);
- ``idempotency``: ``full`` plus an idempotency key per call, on a private redis-server the script
  starts: two Redis round trips per run (results/overhead-idempotency.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from celery import Celery
from celery.app.trace import build_tracer, setup_worker_optimizations

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import celery_policy
from benchmarks._results import save  # first: it reads the commit at start

POLICY = """
version: 1
errors:
  transient: [builtins.TimeoutError, builtins.ConnectionError]
  permanent: [builtins.ValueError]
defaults:
  retry:
    on: [transient]
    never: [permanent]
    unknown: retry
    unknown_max_retries: 2
    max_retries: 8
    deadline: 1h
    backoff: {initial: 1s, factor: 2, max: 5m, jitter: full}
    rules:
      - on: [builtins.OSError]
        delay_from: retry_after
        max_retries: 20
  timeout: {soft: 5m, hard: 5m30s}
  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 3}
  dead_letter: {enabled: true}
  log: {args: redact}
  hooks: {on_failure: benchmarks.bench_overhead.hook, on_retry: benchmarks.bench_overhead.hook}
dead_letter_store: {url: "redis://127.0.0.1:1/0"}  # never contacted on the success path
"""


VARIANTS = ("full", "no-redelivery", "idempotency")


def policy_text(variant: str, store_url: str | None = None) -> str:
    text = POLICY
    if variant == "no-redelivery":
        text = text.replace("reject_on_worker_lost: true, max_redeliveries: 3}", "reject_on_worker_lost: true}")
    if variant == "idempotency":
        assert store_url is not None
        text = text.replace('"redis://127.0.0.1:1/0"}  # never contacted on the success path', f'"{store_url}"}}')
        text += 'tasks:\n  bench.work: {idempotency: {key: "work:{args[0]}", ttl: 1h}}\n'
    return text


def hook(request: object, exc: object, decision: object) -> None:
    return None


def body(x: int) -> int:
    return x + 1


def make_plain() -> tuple[Celery, object]:
    app = Celery("plain", broker="memory://", backend="disabled://")
    task = app.task(
        body,
        name="bench.work",
        ignore_result=True,
        autoretry_for=(TimeoutError, ConnectionError),
        dont_autoretry_for=(ValueError,),
        retry_backoff=1,
        retry_backoff_max=300,
        retry_jitter=True,
        max_retries=8,
        soft_time_limit=300,
        time_limit=330,
        acks_late=True,
        reject_on_worker_lost=True,
    )
    app.finalize()
    return app, app.tasks[task.name]


def make_bare() -> tuple[Celery, object]:
    """Plain Celery with no failure handling at all: the floor."""
    app = Celery("bare", broker="memory://", backend="disabled://")
    task = app.task(body, name="bench.work", ignore_result=True)
    app.finalize()
    return app, app.tasks[task.name]


def make_policy(policy_path: str) -> tuple[Celery, object]:
    app = Celery("policy", broker="memory://", backend="disabled://", task_cls=celery_policy.PolicyTask)
    celery_policy.install(app, policy_path)
    task = app.task(body, name="bench.work", ignore_result=True)
    app.finalize()
    return app, app.tasks[task.name]


def time_tracer(app: Celery, task: object, calls: int, first: int = 0) -> float:
    """Seconds per call; the argument runs from ``first`` so every idempotency key of a run is new."""
    trace = build_tracer("bench.work", task, app=app, eager=False, propagate=True)
    task_id = str(uuid.uuid4())
    request = {"id": task_id, "delivery_info": {}, "hostname": "bench"}
    start = time.perf_counter()
    for i in range(first, first + calls):
        trace(task_id, (i,), {}, request)
    return (time.perf_counter() - start) / calls


def make_metrics_policy(policy_path: str, metrics_dir: str) -> tuple[Celery, object]:
    """The policy app with observability.prometheus on and its counters registered, as a worker's boot does."""
    from celery_policy.metrics import MultiprocessCounters
    from celery_policy.runtime import observability

    path = Path(policy_path).with_name("bench-metrics.yaml")
    path.write_text(POLICY + "observability: {prometheus: {port: 9808}}\n")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    app = Celery("metrics", broker="memory://", backend="disabled://", task_cls=celery_policy.PolicyTask)
    celery_policy.install(app, str(path))
    task = app.task(body, name="bench.work", ignore_result=True)
    app.finalize()
    observability.add_sink(MultiprocessCounters().record)  # what worker_init does (no HTTP server needed here)
    return app, app.tasks[task.name]


def time_decision_counters(calls: int) -> float:
    """One retry decision into the multiprocess counters (the cost a decision pays, never a success)."""
    from celery_policy.metrics import MultiprocessCounters
    from celery_policy.runtime.decision import Decision

    counters = MultiprocessCounters()
    decision = Decision("retry", "bench.work", "id", 1, 8, 1.0, "builtins.TimeoutError", None, "x", "retry.on")
    start = time.perf_counter()
    for _ in range(calls):
        counters.record(decision)
    return (time.perf_counter() - start) / calls


def time_classify(calls: int, policy_path: str) -> tuple[float, float]:
    """Exception -> decision: the policy's MRO lookup vs autoretry's isinstance checks."""
    from celery_policy.resolve import load
    from celery_policy.runtime.classify import Classifier

    resolved = load(policy_path).for_task("bench.work")
    classifier = Classifier(resolved.policy.retry, dict(resolved.groups))
    exc = ConnectionRefusedError("nope")
    start = time.perf_counter()
    for _ in range(calls):
        classifier.classify(type(exc))
    ours = (time.perf_counter() - start) / calls
    autoretry_for = (TimeoutError, ConnectionError)
    dont = (ValueError,)
    start = time.perf_counter()
    for _ in range(calls):
        if isinstance(exc, dont) or isinstance(exc, autoretry_for):  # noqa: SIM101 - autoretry tests each tuple
            pass
    theirs = (time.perf_counter() - start) / calls
    return ours, theirs


def breaker_main(calls: int, rounds: int) -> None:
    """``--breaker``: the same policy with and without a closed circuit breaker (state in a real redis-server)."""
    from benchmarks.bench_e2e import start_redis

    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_redis(Path(tmp))
        try:
            base = POLICY.replace(
                'dead_letter_store: {url: "redis://127.0.0.1:1/0"}', f'dead_letter_store: {{url: "{url}"}}'
            )
            flow = "breakers:\n  payments: {on: [transient]}\ntasks:\n  bench.work: {breaker: payments}\n"
            paths = {}
            for label, text in (("policy", base), ("breaker", base + flow)):
                paths[label] = os.path.join(tmp, f"{label}.yaml")
                Path(paths[label]).write_text(text)
            apps = {label: make_policy(path) for label, path in paths.items()}
            for app, _ in apps.values():
                setup_worker_optimizations(app)
            times: dict[str, list[float]] = {"policy": [], "breaker": []}
            for _ in range(rounds):
                for label, (app, task) in apps.items():
                    times[label].append(time_tracer(app, task, calls))
        finally:
            server.terminate()
            server.wait()
    p, q = statistics.median(times["policy"]), statistics.median(times["breaker"])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {calls} calls x {rounds} rounds (A B interleaved)")
    print(f"success path: policy {p * 1e6:.3f} us/call, policy + closed breaker {q * 1e6:.3f} us/call")
    print(f"  a closed breaker adds {(q - p) * 1e6:+.3f} us per call (median); ratio {p / q:.3f}")
    from benchmarks._results import save

    save(
        "overhead-breaker",
        {
            "calls": calls,
            "rounds": rounds,
            "policy_us": p * 1e6,
            "breaker_us": q * 1e6,
            "added_us": (q - p) * 1e6,
            "ratio": p / q,
            "runs_us": {k: [v * 1e6 for v in vals] for k, vals in times.items()},
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--breaker", action="store_true", help="measure a closed circuit breaker instead")
    parser.add_argument("--variant", choices=VARIANTS, default="full")
    opts = parser.parse_args()
    if opts.breaker:
        breaker_main(opts.calls, opts.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        store_url = None
        if opts.variant == "idempotency":
            from benchmarks.bench_e2e import start_redis

            server, store_url = start_redis(Path(tmp))
        policy_path = os.path.join(tmp, "bench.yaml")
        Path(policy_path).write_text(policy_text(opts.variant, store_url))
        plain_app, plain_task = make_plain()
        policy_app, policy_task = make_policy(policy_path)
        bare_app, bare_task = make_bare()
        metrics_app, metrics_task = make_metrics_policy(policy_path, tmp)
        for app in (plain_app, policy_app, bare_app, metrics_app):
            setup_worker_optimizations(app)
        plain: list[float] = []
        policy: list[float] = []
        bare: list[float] = []
        metrics: list[float] = []
        for n in range(opts.rounds):
            plain.append(time_tracer(plain_app, plain_task, opts.calls, n * opts.calls))
            policy.append(time_tracer(policy_app, policy_task, opts.calls, n * opts.calls))
            bare.append(time_tracer(bare_app, bare_task, opts.calls, n * opts.calls))
            metrics.append(time_tracer(metrics_app, metrics_task, opts.calls, n * opts.calls))
        ours, theirs = time_classify(opts.calls, policy_path)
        counted = time_decision_counters(min(opts.calls, 50_000))
        if server is not None:
            server.terminate()
            server.wait(10)
    p, q = statistics.median(plain), statistics.median(policy)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {opts.calls} calls x {opts.rounds} rounds"
        f" (A B interleaved), variant {opts.variant}"
    )
    print(f"success path through the tracer: plain {p * 1e6:.3f} us/call, policy {q * 1e6:.3f} us/call")
    print(f"  added per call: {(q - p) * 1e6:+.3f} us (median); throughput ratio policy/plain = {p / q:.3f}")
    print(
        f"  spread: plain {min(plain) * 1e6:.3f}-{max(plain) * 1e6:.3f} us, policy {min(policy) * 1e6:.3f}-{max(policy) * 1e6:.3f} us"
    )
    b = statistics.median(bare)
    print(
        f"  reference: Celery with no failure options {b * 1e6:.3f} us/call; policy adds {(q - b) * 1e6:+.3f} us over it"
    )
    m = statistics.median(metrics)
    print(
        f"  with observability.prometheus on: {m * 1e6:.3f} us/call ({(m - q) * 1e6:+.3f} us vs the same policy without; "
        f"spread {min(metrics) * 1e6:.3f}-{max(metrics) * 1e6:.3f} us)"
    )
    print(f"  one decision into the Prometheus counters (decision path only): {counted * 1e6:.2f} us")
    print(
        f"classification (exception -> decision): policy {ours * 1e9:.0f} ns, autoretry isinstance {theirs * 1e9:.0f} ns"
    )

    save(
        "overhead" if opts.variant == "full" else f"overhead-{opts.variant}",
        {
            "variant": opts.variant,
            "calls": opts.calls,
            "rounds": opts.rounds,
            "plain_us": p * 1e6,
            "policy_us": q * 1e6,
            "bare_us": b * 1e6,
            "added_us": (q - p) * 1e6,
            "ratio": p / q,
            "classify_ns": ours * 1e9,
            "autoretry_isinstance_ns": theirs * 1e9,
            "policy_with_prometheus_us": m * 1e6,
            "prometheus_added_us": (m - q) * 1e6,
            "prometheus_decision_us": counted * 1e6,
        },
    )


if __name__ == "__main__":
    main()
