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
    .venv/bin/python benchmarks/bench_overhead.py --instructions   # every app, counted by callgrind, one run

``--instructions`` is the load-independent measure: each app (Celery with no
failure options, plain Celery with the same options, and every policy variant,
including a closed circuit breaker) runs in a child process under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, which counts the
instructions of ``--repeats`` loops of ``--calls`` tracer calls one by one (the
child calls ``os.sched_yield()`` between loops; ``--dump-before=sched_yield``
dumps and zeroes the counters there), so start-up, imports and set-up are not in
them; the loops of one app should agree to well under 1 %. ``--method subtract``
instead runs a child of N calls and one of 2N per app and repeat and takes
(count(2N) - count(N)) / N (four times the children, the same figures).
Callgrind counts the worker process only: the redis-server the idempotency and
breaker apps talk to is another process, so for idempotency the count is the
client side (redis-py, the socket calls) and the wall-clock time, dominated by
its four round trips, is the other half of the story. The same run also times
every app by wall clock (rounds interleaved) and records the load average
(results/overhead-instructions.json).

Variants of the policy (the plain app is the same in each):
- ``full`` (default): retries, time limits, late ack with ``max_redeliveries``, dead letters, hooks
  (results/overhead.json);
- ``no-redelivery``: the same without ``ack.max_redeliveries`` (results/overhead-no-redelivery.json);
- ``idempotency``: ``full`` plus an idempotency key per call, on a private redis-server the script
  starts: four Redis round trips per run (results/overhead-idempotency.json).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from celery import Celery
from celery.app.trace import build_tracer, setup_worker_optimizations

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import celery_policy

if "--instructions-child" not in sys.argv:  # a child under callgrind runs no git: its count would include it
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


# -- instructions per call (callgrind): the measure that does not depend on the machine's load --------

# Every app of --instructions, in the order they are run and reported. "breaker" is "full" plus a closed breaker.
APPS = ("bare", "plain", "full", "no-redelivery", "idempotency", "breaker")
NEVER_CONTACTED = '"redis://127.0.0.1:1/0"}  # never contacted on the success path'
# cache_for 1h: a closed breaker asks Redis once per cache_for (1 s by default) and process; under callgrind, 50x
# slower, that would put a load-dependent number of those round trips into every loop.
FLOW = (
    "flow_store: {cache_for: 1h}\nbreakers:\n  payments: {on: [transient]}\ntasks:\n  bench.work: {breaker: payments}\n"
)
# Calls before the measured loops in every child: first-call caches, lazy imports and the interpreter's own warm-up
# (Python 3.10 turns on a code object's attribute/global cache after 1,024 runs: with 200 warm-up calls its first
# loop counted 0.85 % more than the next; 3.11 specializes after a few runs).
WARMUP_CALLS = 2000


def app_policy_text(label: str, store_url: str) -> str:
    """The policy file of one policy app of ``--instructions``."""
    if label == "breaker":
        return policy_text("full").replace(NEVER_CONTACTED, f'"{store_url}"}}') + FLOW
    return policy_text(label, store_url if label == "idempotency" else None)


def as_pool_process() -> None:
    """Install billiard's soft-limit handler, as a prefork pool process has it: the policy's soft-limit backstop
    (runtime/soft_limit.py) then arms on every call as it does in a worker's pool process (in a process without
    it, e.g. the solo pool, the backstop does nothing and costs one attribute read)."""
    import signal

    from billiard.pool import soft_timeout_sighandler

    signal.signal(signal.SIGUSR1, soft_timeout_sighandler)


def build_app(label: str, directory: str, store_url: str) -> tuple[Celery, object]:
    as_pool_process()
    if label == "bare":
        app, task = make_bare()
    elif label == "plain":
        app, task = make_plain()
    else:
        path = Path(directory) / f"instructions-{label}.yaml"
        path.write_text(app_policy_text(label, store_url))
        app, task = make_policy(str(path))
    setup_worker_optimizations(app)
    return app, task


def instructions_child(
    label: str, calls: int, directory: str, store_url: str, segments: int, warmup: int = WARMUP_CALLS
) -> None:
    """What runs under callgrind: set up one app, warm it up, then the measured calls through the tracer.

    ``segments`` 0: one loop of ``calls`` (the parent subtracts a child of N from one of 2N). Otherwise that
    many loops of ``calls``, each between two calls of ``os.sched_yield``, where callgrind
    (``--dump-before=sched_yield``) dumps and zeroes its counters: each loop's count is one part of the output.
    """
    app, task = build_app(label, directory, store_url)
    time_tracer(app, task, warmup)
    # The full collection that set-up's objects make due would otherwise land in the first loop (1 % more on
    # Python 3.10); the collections the calls themselves cause stay in the loops.
    gc.collect()
    if not segments:
        time_tracer(app, task, calls, warmup)
        return
    for k in range(segments):
        os.sched_yield()
        time_tracer(app, task, calls, warmup + k * calls)  # idempotency: new keys in every loop
    os.sched_yield()


def callgrind_total(out_file: Path) -> int:
    """The instructions a callgrind output file counted (its ``summary:`` or ``totals:`` line)."""
    match = re.search(r"^(?:summary|totals):\s*(\d+)", out_file.read_text(), re.M)
    if match is None:
        msg = f"{out_file}: no summary line (did valgrind run to the end?)"
        raise SystemExit(msg)
    return int(match.group(1))


def callgrind_parts(out_file: Path) -> list[int]:
    """The count of every part of a run with dumps (``out_file.1``, ``.2``, ..., ``out_file`` at exit), in order."""
    parts = {}
    for path in out_file.parent.glob(out_file.name + "*"):  # the last part is out_file itself
        match = re.search(r"^part:\s*(\d+)", path.read_text(), re.M)
        if match is not None:
            parts[int(match.group(1))] = callgrind_total(path)
    return [parts[k] for k in sorted(parts)]


def child_command(
    label: str, calls: int, directory: str, store_url: str, segments: int = 0, warmup: int = WARMUP_CALLS
) -> list[str]:
    return [sys.executable, __file__, "--instructions-child", label, "--calls", str(calls), "--directory", directory,
            "--store-url", store_url, "--segments", str(segments), "--warmup", str(warmup)]  # fmt: skip


def child_env() -> dict[str, str]:
    """Every child the same: a fixed hash seed (set and dict orders, so the same work), the same path."""
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.pop("PYTHONMALLOC", None)
    return env


def run_callgrind(command: list[str], out_file: Path, *options: str) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is missing: apt-get install valgrind (--instructions counts with callgrind)")
    done = subprocess.run(
        [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_file}", *options, *command],
        env=child_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        msg = f"callgrind run {' '.join(command[2:5])} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        raise SystemExit(msg)


def count_instructions(label: str, calls: int, directory: str, store_url: str, out_file: Path, warmup: int) -> int:
    """Instructions of one child process (start-up included) running ``calls`` tracer calls of app ``label``."""
    run_callgrind(child_command(label, calls, directory, store_url, 0, warmup), out_file)
    return callgrind_total(out_file)


def count_segments(
    label: str, calls: int, segments: int, directory: str, store_url: str, out_file: Path, warmup: int
) -> list[int]:
    """Instructions of each of ``segments`` loops of ``calls`` tracer calls, in one child process."""
    command = child_command(label, calls, directory, store_url, segments, warmup)
    run_callgrind(command, out_file, "--dump-before=sched_yield")
    parts = callgrind_parts(out_file)
    if len(parts) != segments + 2:  # set-up, the loops, exit: another sched_yield would add parts
        msg = f"callgrind run of {label}: {len(parts)} parts, expected {segments + 2} (set-up, loops, exit)"
        raise SystemExit(msg)
    return parts[1:-1]


def count_all(
    opts: argparse.Namespace, apps: list[str], tmp: str, store_url: str, keep: Path | None
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The callgrind counts of every app (totals as counted) and the instructions per call they give."""
    n = opts.calls
    # Every child that talks to Redis gets a database of its own (1, 2, ...): each starts empty, so
    # every measured loop does the same work per call, and children can run in parallel.
    segments = opts.method == "segments"
    if segments:  # one child per app, its --repeats loops measured one by one
        jobs = [(0, label, n) for label in apps]
    else:  # a child of N calls and one of 2N per app and repeat
        jobs = [(r, label, calls) for r in range(opts.repeats) for label in apps for calls in (n, 2 * n)]
    uses_redis = [job for job in jobs if job[1] in ("idempotency", "breaker")]
    if len(uses_redis) > 15:
        sys.exit("--repeats: at most 15 children per Redis database set; use fewer repeats")

    def run(job: tuple[int, str, int]) -> list[int]:
        repeat, label, calls = job
        url = store_url
        if job in uses_redis:
            url = store_url.rsplit("/", 1)[0] + f"/{uses_redis.index(job) + 1}"
        if segments:
            out = (keep or Path(tmp)) / f"callgrind.{label}.segments.out"
            for old in out.parent.glob(out.name + "*"):
                old.unlink()
            return count_segments(label, calls, opts.repeats, tmp, url, out, opts.warmup)
        out = (keep or Path(tmp)) / f"callgrind.{label}.{calls}.{repeat + 1}.out"
        return [count_instructions(label, calls, tmp, url, out, opts.warmup)]

    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        counted = dict(zip(jobs, pool.map(run, jobs), strict=True))
    totals: dict[str, Any] = {}
    per: dict[str, list[float]] = {}
    for label in apps:
        if segments:
            totals[label] = counted[(0, label, n)]
            per[label] = [t / n for t in totals[label]]
        else:
            totals[label] = [[counted[(r, label, n)][0], counted[(r, label, 2 * n)][0]] for r in range(opts.repeats)]
            per[label] = [(b - a) / n for a, b in totals[label]]
    return totals, per


def instructions_main(opts: argparse.Namespace) -> None:
    """``--instructions``: instructions per call of every app, twice, and their wall-clock time, in one run."""
    from benchmarks.bench_e2e import start_redis

    apps = [a for a in APPS if a in opts.only.split(",")] if opts.only else list(APPS)
    n, segments = opts.calls, opts.method == "segments"
    keep = Path(opts.callgrind_dir) if opts.callgrind_dir else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server, store_url = start_redis(Path(tmp))
        try:
            load_start = os.getloadavg()[0]
            # Wall clock first, in this process, rounds interleaved over every app (idempotency: a tenth of the
            # calls, each pays four round trips); every idempotency key of the run is new (``first``).
            built = {label: build_app(label, tmp, store_url) for label in apps}
            wall: dict[str, list[float]] = {label: [] for label in apps}
            for r in range(opts.rounds):
                for label, (app, task) in built.items():
                    calls = max(1, opts.wall_calls // 10) if label == "idempotency" else opts.wall_calls
                    wall[label].append(time_tracer(app, task, calls, 10_000_000 + r * opts.wall_calls) * 1e6)
            load_wall = os.getloadavg()[0]
            # One unmeasured child per app first: it writes the bytecode caches the measured children then read.
            for label in apps:
                subprocess.run(child_command(label, 1, tmp, store_url), env=child_env(), check=True)
            totals, per = count_all(opts, apps, tmp, store_url, keep)
            load_end = os.getloadavg()[0]
        finally:
            server.terminate()
            server.wait(10)
    med = {label: statistics.median(values) for label, values in per.items()}
    spread_pct = {
        label: (max(v) - min(v)) / statistics.median(v) * 100 if statistics.median(v) else 0.0
        for label, v in per.items()
    }
    how = (
        f"{opts.repeats} loops of {n} calls in one child"
        if segments
        else f"(2 x {n} - {n}) calls, {opts.repeats} times"
    )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; callgrind, {how};"
        f" wall clock {opts.wall_calls} calls x {opts.rounds} rounds"
        f" (load {load_start:.2f} at start, {load_wall:.2f} after the wall-clock rounds, {load_end:.2f} at the end)"
    )
    for label in apps:
        counts = ", ".join(f"{v:,.1f}" for v in per[label])
        print(f"  {label:>13}: {counts} instructions/call ({totals[label]} in all)")
    print(f"{'app':>13} {'instructions/call':>18} {'repeats agree':>14} {'wall us/call (median)':>22}")
    for label in apps:
        print(f"{label:>13} {med[label]:18,.0f} {spread_pct[label]:13.3f}% {statistics.median(wall[label]):22.2f}")
    if "plain" in med:
        for label in apps:
            if label not in ("plain", "bare"):
                print(f"  {label} vs plain: {med[label] - med['plain']:+,.0f} instructions/call")
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    save(
        "overhead-instructions",
        {
            "calls": n,
            "repeats": opts.repeats,
            "warmup_calls": opts.warmup,
            "apps": apps,
            "valgrind": version,
            "method": opts.method,
            "method_text": (
                (
                    f"per app: one child process under valgrind --tool=callgrind --dump-before=sched_yield with"
                    f" PYTHONHASHSEED=0: set-up, {opts.warmup} warm-up calls, gc.collect(), then {opts.repeats}"
                    f" loops of N = {n}"
                    " calls through the tracer, each between two os.sched_yield() calls, where callgrind dumps and"
                    " zeroes its counters; instructions per call = the loop's count / N."
                )
                if segments
                else (
                    f"per app: one child process with {opts.warmup} warm-up calls, gc.collect() and then N calls"
                    " through the"
                    f" tracer, another with 2N (N = {n}), each under valgrind --tool=callgrind with"
                    " PYTHONHASHSEED=0; instructions per call = (total(2N) - total(N)) / N."
                )
            )
            + " The worker process only: redis-server's own work (idempotency, breaker) is not counted.",
            "instructions_per_call": per,
            "instructions_per_call_median": med,
            "repeat_spread_pct": spread_pct,
            "totals": totals,
            "wall_calls": opts.wall_calls,
            "wall_rounds": opts.rounds,
            "wall_us": wall,
            "wall_us_median": {label: statistics.median(v) for label, v in wall.items()},
            "load_average_1m_start": round(load_start, 2),
            "load_average_1m_wall": round(load_wall, 2),
        },
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--breaker", action="store_true", help="measure a closed circuit breaker instead")
    parser.add_argument("--variant", choices=VARIANTS, default="full")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per call of every app with callgrind"
    )
    parser.add_argument("--repeats", type=int, default=3, help="--instructions: measure every app this many times")
    parser.add_argument("--wall-calls", type=int, default=20_000, help="--instructions: calls per wall-clock round")
    parser.add_argument("--jobs", type=int, default=1, help="--instructions: callgrind children run at once")
    parser.add_argument("--only", default="", help="--instructions: a comma-separated subset of " + ",".join(APPS))
    parser.add_argument("--callgrind-dir", default="", help="--instructions: keep callgrind's output files here")
    parser.add_argument("--instructions-child", choices=APPS, help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    parser.add_argument("--segments", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--warmup", type=int, default=WARMUP_CALLS, help="--instructions: calls before the counted ones, per app"
    )
    parser.add_argument(
        "--method",
        choices=("segments", "subtract"),
        default="segments",
        help="--instructions: loops counted one by one in one child per app (callgrind dumps), or a child"
        " of N calls subtracted from one of 2N per app and repeat (4x the children)",
    )
    opts = parser.parse_args()
    if opts.instructions:  # the counts need far fewer calls than the clock
        if opts.calls == parser.get_default("calls"):
            opts.calls = 2_000
        if opts.rounds == parser.get_default("rounds"):
            opts.rounds = 5
    return opts


def main() -> None:
    opts = parse_args()
    if opts.instructions_child:
        instructions_child(
            opts.instructions_child, opts.calls, opts.directory, opts.store_url, opts.segments, opts.warmup
        )
        return
    if opts.instructions:
        instructions_main(opts)
        return
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
