"""Benchmark: load a big policy and resolve every task name in it.

The policy has 1,000 glob patterns and 1,000 exact entries; 10,000 task names
are resolved. The same run times a naive matcher (every glob tested with
``fnmatch.fnmatchcase`` for every name) through the same merge code, so the
ratio isolates what :class:`celery_policy.patterns.PatternIndex` buys.

Run from the repository root::

    .venv/bin/python benchmarks/bench_resolve.py            # defaults: 5 repeats
    .venv/bin/python benchmarks/bench_resolve.py --repeats 9

Each figure is the median of the repeats. "cold" resolves on a freshly built
Policy (no merged-layer cache); "warm" resolves the same names again.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from celery_policy import Policy, load
from celery_policy.loader import merge_raw, read_policy_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._results import save  # first: it reads the commit at start

SERVICES = 50
MODULES = 20
TASKS_PER_MODULE = 10


def task_names(services: int = SERVICES) -> list[str]:
    """10,000 names by default: svc00.mod00.task0 ... svc49.mod19.task9."""
    return [
        f"svc{s:02d}.mod{m:02d}.task{t}"
        for s in range(services)
        for m in range(MODULES)
        for t in range(TASKS_PER_MODULE)
    ]


def build_document(names: Sequence[str], services: int = SERVICES) -> dict[str, Any]:
    """1,000 globs of three shapes and 1,000 exact names (by default); no two equally specific globs disagree."""
    tasks: dict[str, Any] = {}
    # 50 per service: one wildcard, prefix 6.
    for s in range(services):
        tasks[f"svc{s:02d}.*"] = {"timeout": {"soft": f"{s + 1}m", "hard": f"{s + 2}m"}}
    # 900 per module: one wildcard, prefix 12.
    modules = [(s, m) for s in range(services) for m in range(MODULES)][:900]
    for s, m in modules:
        tasks[f"svc{s:02d}.mod{m:02d}.*"] = {"retry": {"max_retries": (s + m) % 10}}
    # 50 with no literal prefix, the worst case for prefix bucketing: every name tests them.
    suffixes = [(m, t) for m in range(MODULES) for t in range(TASKS_PER_MODULE)][:50]
    for m, t in suffixes:
        tasks[f"*.mod{m:02d}.task{t}"] = {"route": {"queue": f"q{m}"}}
    # 1,000 exact names: every tenth task.
    for name in names[::10]:
        tasks[name] = {"ack": {"late": True}, "retry": {"backoff": {"initial": "2s"}}}
    return {
        "version": 1,
        "defaults": {
            "retry": {"max_retries": 5, "backoff": {"initial": "1s", "factor": 2, "max": "5m"}},
            "timeout": {"soft": "5m", "hard": "6m"},
        },
        "tasks": tasks,
    }


class NaivePolicy(Policy):
    """The same resolver, but every glob is tested against every name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        layering = self.layering
        self._all_globs = [(pattern, layer) for pattern, layer in layering.tasks.items() if layer in layering.globs]
        self._exact = {name: layer for name, layer in layering.tasks.items() if layer not in layering.globs}

    def matching_layers(self, task: str) -> list[Any]:
        globs = [layer for pattern, layer in self._all_globs if fnmatch.fnmatchcase(task, pattern)]
        globs.sort(key=lambda layer: layer.rank)
        layers = [self.layering.defaults, *globs]
        exact = self._exact.get(task)
        if exact is not None:
            layers.append(exact)
        return layers


def timed(fn: Callable[[], object], repeats: int, setup: Callable[[], None] | None = None) -> float:
    samples = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--services", type=int, default=SERVICES, help="200 task names and ~20 globs per service")
    args = parser.parse_args(argv)
    names = task_names(args.services)
    document = build_document(names, args.services)
    globs = sum(1 for name in document["tasks"] if any(c in name for c in "*?["))
    exact = len(document["tasks"]) - globs

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "big.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        size_kb = path.stat().st_size / 1024

        load_s = timed(lambda: load(path), args.repeats)
        raw = merge_raw([read_policy_file(path)])

        state: dict[str, Policy] = {}

        def fresh(kind: type[Policy]) -> Callable[[], None]:
            def make() -> None:
                state["policy"] = kind(raw)

            return make

        def resolve_all() -> None:
            policy = state["policy"]
            for name in names:
                policy.for_task(name)

        def match_all() -> None:
            policy = state["policy"]
            for name in names:
                policy.matching_layers(name)

        cold_s = timed(resolve_all, args.repeats, fresh(Policy))
        warm_s = timed(resolve_all, args.repeats)  # state["policy"] is the last fresh one, now cached
        naive_cold_s = timed(resolve_all, args.repeats, fresh(NaivePolicy))
        match_s = timed(match_all, args.repeats, fresh(Policy))
        naive_match_s = timed(match_all, args.repeats, fresh(NaivePolicy))

    # The two matchers must agree before their times mean anything.
    indexed, naive = Policy(raw), NaivePolicy(raw)
    stacks = set()
    for name in names:
        labels = [layer.label for layer in indexed.matching_layers(name)]
        assert labels == [layer.label for layer in naive.matching_layers(name)], name
        stacks.add(tuple(labels))

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
    print(f"policy: {globs} globs + {exact} exact entries ({size_kb:.0f} KiB of YAML); {len(names)} task names")
    print(f"distinct layer stacks (merges a cold resolve does): {len(stacks)}")
    print(f"median of {args.repeats} repeats")
    print()
    rows = [
        ("load() (read, parse, validate, index)", load_s),
        ("resolve all names, cold (PatternIndex)", cold_s),
        ("resolve all names, warm (PatternIndex)", warm_s),
        ("resolve all names, cold (naive fnmatchcase)", naive_cold_s),
        ("match only (PatternIndex)", match_s),
        ("match only (naive fnmatchcase)", naive_match_s),
    ]
    for label, seconds in rows:
        per_name = "" if label.startswith("load") else f"  ({seconds / len(names) * 1e6:6.1f} us/name)"
        print(f"  {label:<45} {seconds * 1000:9.1f} ms{per_name}")
    print()
    print(f"  naive / indexed, resolve cold: {naive_cold_s / cold_s:5.1f}x")
    print(f"  naive / indexed, match only:   {naive_match_s / match_s:5.1f}x")

    save(
        "resolve",
        {
            "repeats": args.repeats,
            "globs": globs,
            "exact": exact,
            "names": len(names),
            "layer_stacks": len(stacks),
            "load_ms": load_s * 1e3,
            "resolve_cold_ms": cold_s * 1e3,
            "resolve_warm_ms": warm_s * 1e3,
            "resolve_cold_naive_ms": naive_cold_s * 1e3,
            "match_ms": match_s * 1e3,
            "match_naive_ms": naive_match_s * 1e3,
            "speedup_cold": naive_cold_s / cold_s,
            "speedup_match": naive_match_s / match_s,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
