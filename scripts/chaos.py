#!/usr/bin/env python
"""Run the chaos suite's driver (tests/chaos/driver.py) and print its table.

    .venv/bin/python scripts/chaos.py                      # the full run: 10,000 tasks, 24 kills, 3 broker restarts
    .venv/bin/python scripts/chaos.py --compare --mix ok   # fetch-window experiment: plain vs reliable, same seed
    .venv/bin/python scripts/chaos.py --tasks 1000 --main-kills 3 --child-kills 2 --restarts 1
    .venv/bin/python scripts/chaos.py --mix slow --tasks 400 --restarts 8 --keep-logs /tmp/chaos-run

``--keep-logs DIR`` keeps the worker logs and the broker's and evidence Redis's data
directories (the broker's AOF holds every write it acknowledged) under DIR instead
of a temporary directory that is deleted at the end.

Exit code 1 when a reliable-fetch run lost a task, ran an idempotent side effect
twice other than after a SIGKILL that landed between the effect and the idempotency
key's result (the at-least-once window, reported as a note), dead-lettered a permanent failure other than once, let a poison pill
run past max_redeliveries, let a slow task run past its soft time limit to
success, dead-lettered a task that succeeds, retried a long-backoff task before
its backoff, or let a fault land while no message was in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.driver import ChaosConfig, ChaosReport, ChaosRun, format_table  # type: ignore[import-not-found]  # on sys.path above

from benchmarks._results import machine


def problems(report: ChaosReport) -> list[str]:
    found = []
    if report.lost:
        found.append(f"{report.lost} lost: {report.lost_ids[:20]}")
    if report.overran_ids:
        found.append(
            f"{len(report.overran_ids)} slow tasks ran past their soft time limit and succeeded (neither the"
            f" worker's main process nor the pool process's backstop raised it): {report.overran_ids[:20]}"
        )
    if report.pending:
        found.append(f"{report.pending} still pending at the end")
    unexplained = {k: v for k, v in report.duplicate_kinds.items() if k not in report.duplicates_after_kill}
    if unexplained:
        found.append(f"{len(unexplained)} duplicate side effects not explained by a kill: {unexplained}")
    bad = {k: v for k, v in report.permanent_dead_letters.items() if v != 1}
    if bad:
        found.append(f"permanent failures not dead-lettered exactly once: {bad}")
    cap = report.config.max_redeliveries + 1
    over = {k: v for k, v in report.poison_runs.items() if v > cap or report.poison_dead_letters.get(k) != 1}
    if over:
        found.append(f"poison pills past max_redeliveries or not dead-lettered once: {over}")
    if report.unexpected_dead_letters:
        found.append(
            f"{report.unexpected_dead_letters} succeeding tasks dead-lettered: {report.unexpected_dead_letter_ids[:20]}"
        )
    idle = [f"{action} ({in_flight})" for action, in_flight in report.in_flight_at_fault if in_flight <= 0]
    if idle:
        found.append(f"{len(idle)} faults hit no work in flight (-1: the broker did not answer): {idle}")
    if report.early_retries:
        found.append(f"long-backoff tasks retried before their backoff: {report.early_retries[:20]}")
    return found


def notes(report: ChaosReport) -> list[str]:
    """What the run shows that breaks no guarantee."""
    if not report.duplicates_after_kill:
        return []
    return [
        f"{len(report.duplicates_after_kill)} side effects ran twice because the process that applied the first"
        " was SIGKILLed after the effect and before the idempotency key stored the result (at-least-once;"
        f" key: seconds from effect to kill): {report.duplicates_after_kill}"
    ]


@contextlib.contextmanager
def _workdir(keep: Path | None, reliable: bool) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="celery-policy-chaos-") as tmp:
            yield Path(tmp)
        return
    path = keep / ("reliable" if reliable else "plain")
    if path.exists() and any(path.iterdir()):
        msg = f"{path} is not empty: pick another --keep-logs directory"
        raise SystemExit(msg)
    path.mkdir(parents=True, exist_ok=True)
    yield path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mix", choices=["chaos", "ok", "slow"], default="chaos")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--main-kills", type=int, default=24)
    parser.add_argument("--child-kills", type=int, default=12)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=1800.0)
    parser.add_argument("--plain", action="store_true", help="plain kombu fetch instead of reliable fetch")
    parser.add_argument("--compare", action="store_true", help="run plain kombu, then reliable fetch, same seed")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="keep worker logs and Redis data dirs here (one subdir per run)"
    )
    args = parser.parse_args()
    started_on = machine()  # the commit and load when the run starts
    modes = [False, True] if args.compare else [not args.plain]
    reports = []
    for reliable in modes:
        config = ChaosConfig(
            tasks=args.tasks,
            seed=args.seed,
            mix=args.mix,
            reliable=reliable,
            workers=args.workers,
            concurrency=args.concurrency,
            main_kills=args.main_kills,
            child_kills=args.child_kills,
            restarts=args.restarts,
            deadline_s=args.deadline,
        )
        with _workdir(args.keep_logs, reliable) as workdir:
            report = ChaosRun(config, workdir).run()
        if args.keep_logs:
            print(f"logs and Redis data kept in {workdir}", flush=True)
        reports.append(report)
        print(format_table([report]), flush=True)
        if report.worker_exits:
            print("workers that exited on their own:", report.worker_exits)
    print()
    print(format_table(reports))
    if args.json:
        rows = [
            {
                **r.row(),
                "mix": r.config.mix,
                "unexpected dead letters": r.unexpected_dead_letters,
                "in flight at each fault": [n for _action, n in r.in_flight_at_fault],
                "worker exits": r.worker_exits,
                "problems": problems(r),
                "notes": notes(r),
            }
            for r in reports
        ]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": started_on, "reports": rows}, indent=2) + "\n")
    failed = False
    for report in reports:
        issues = problems(report)
        label = "reliable fetch" if report.config.reliable else "plain kombu"
        for issue in issues:
            print(f"{label}: {issue}")
        for note in notes(report):
            print(f"{label} (not a failure): {note}")
        failed = failed or (report.config.reliable and bool(issues))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
