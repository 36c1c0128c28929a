"""Boot cost: install() + finalize on an app with 10,000 tasks and a policy with
1,000 glob patterns and 1,000 exact entries, against Celery's own annotation
mechanism doing the same glob matching (a task_annotations object using fnmatch,
the way teams emulate per-pattern settings today).

    .venv/bin/python benchmarks/bench_boot.py [--tasks 10000] [--globs 1000] [--exact 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import celery_policy
from benchmarks._results import save  # first: it reads the commit at start


def task_names(count: int) -> list[str]:
    return [f"svc{i % 100}.mod{i % 37}.task{i}" for i in range(count)]


def exact_max_retries(j: int) -> int:
    """The ``max_retries`` of the j-th exact entry: the same in the policy and in the annotation baseline."""
    return j % 9


def write_policy(path: Path, names: list[str], globs: int, exact: int, envs: int = 0) -> None:
    lines = [
        "version: 1",
        "defaults:",
        "  retry: {on: [builtins.TimeoutError], max_retries: 5, backoff: {initial: 1s, max: 5m}}",
        "  timeout: {soft: 5m, hard: 5m30s}",
        "  ack: {late: true, reject_on_worker_lost: true}",
        "tasks:",
    ]
    for i in range(globs):
        # distinct literal prefixes with one or two wildcards, like real service/module trees
        pattern = f"svc{i % 100}.mod{i // 100}*" if i % 2 else f"svc{i % 100}.mod{i // 100}.task{i}?*"
        lines.append(f'  "{pattern}": {{timeout: {{soft: {60 + i % 50}s, hard: {120 + i % 50}s}}}}')
    for j, name in enumerate(names[:exact]):
        lines.append(f"  {name}: {{retry: {{max_retries: {exact_max_retries(j)}}}}}")
    if envs:
        lines.append("environments:")
        for e in range(envs):
            lines.append(f"  env{e}:")
            lines.append(f"    defaults: {{retry: {{max_retries: {e}}}}}")
    path.write_text("\n".join(lines) + "\n")


def make_app(names: list[str], task_cls: Any = None) -> Celery:
    app = Celery("bench", broker="memory://", backend="disabled://", **({"task_cls": task_cls} if task_cls else {}))

    for name in names:
        app.task(_body(), name=name, shared=False)
    return app


def _body() -> Any:
    def body(x: int) -> int:
        return x

    return body


class GlobAnnotations:
    """Celery's annotation hook doing exact + glob matching (fnmatch over every pattern)."""

    def __init__(self, exact: dict[str, dict[str, Any]], globs: dict[str, dict[str, Any]]) -> None:
        self.exact = exact
        self.globs = list(globs.items())

    def annotate(self, task: Any) -> dict[str, Any] | None:
        merged: dict[str, Any] = {}
        for pattern, values in self.globs:
            if fnmatch.fnmatchcase(task.name, pattern):
                merged.update(values)
        merged.update(self.exact.get(task.name, {}))
        return merged or None

    def annotate_any(self) -> None:
        return None


def boot_policy(names: list[str], policy: Path) -> float:
    app = make_app(names, celery_policy.PolicyTask)
    gc.collect()
    start = time.perf_counter()
    celery_policy.install(app, policy)
    app.finalize()
    return time.perf_counter() - start


def boot_celery(names: list[str], globs: int, exact: int) -> float:
    app = make_app(names)
    glob_values = {
        (f"svc{i % 100}.mod{i // 100}*" if i % 2 else f"svc{i % 100}.mod{i // 100}.task{i}?*"): {
            "soft_time_limit": 60 + i % 50,
            "time_limit": 120 + i % 50,
        }
        for i in range(globs)
    }
    exact_values = {name: {"max_retries": exact_max_retries(j)} for j, name in enumerate(names[:exact])}
    gc.collect()
    start = time.perf_counter()
    app.conf.task_annotations = (GlobAnnotations(exact_values, glob_values),)
    app.finalize()
    return time.perf_counter() - start


def boot_bare(names: list[str]) -> float:
    app = make_app(names)
    gc.collect()
    start = time.perf_counter()
    app.finalize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--globs", type=int, default=1_000)
    parser.add_argument("--exact", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    names = task_names(opts.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "big.yaml"
        write_policy(policy, names, opts.globs, opts.exact)
        ours, theirs, bare = [], [], []
        for _ in range(opts.rounds):
            ours.append(boot_policy(names, policy))
            theirs.append(boot_celery(names, opts.globs, opts.exact))
            bare.append(boot_bare(names))
        tracemalloc.start()
        boot_policy(names, policy)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        size_kb = policy.stat().st_size / 1024
    p, c = statistics.median(ours), statistics.median(theirs)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {opts.tasks} tasks, {opts.globs} globs + {opts.exact} exact ({size_kb:.0f} KiB YAML), {opts.rounds} rounds interleaved"
    )
    print(
        f"install() + finalize: {p * 1000:.0f} ms median ({min(ours) * 1000:.0f}-{max(ours) * 1000:.0f}); peak traced memory {peak / 1e6:.1f} MB"
    )
    print(
        f"Celery task_annotations with fnmatch globs + finalize: {c * 1000:.0f} ms median ({min(theirs) * 1000:.0f}-{max(theirs) * 1000:.0f})"
    )
    b = statistics.median(bare)
    print(f"Celery finalize with no annotations (the floor): {b * 1000:.0f} ms median")
    print(
        f"ratio celery-policy / annotations = {p / c:.2f}; celery-policy adds {(p - b) * 1000:.0f} ms over the floor, annotations add {(c - b) * 1000:.0f} ms"
    )

    save(
        "boot",
        {
            "tasks": opts.tasks,
            "globs": opts.globs,
            "exact": opts.exact,
            "policy_ms": p * 1000,
            "annotations_ms": c * 1000,
            "bare_finalize_ms": b * 1000,
            "ratio": p / c,
            "peak_mb": peak / 1e6,
        },
    )


if __name__ == "__main__":
    main()
