"""Write the figures of README.md and benchmarks/README.md from the saved results in benchmarks/results/.

Every generated block sits between two markers, ``<!-- tables.py:NAME -->`` and
``<!-- /tables.py:NAME -->``; this script replaces what is between them and
leaves the rest of the files alone. ``tests/unit/test_benchmark_tables.py``
fails when a README no longer matches the results files.

    .venv/bin/python benchmarks/tables.py           # rewrite the blocks
    .venv/bin/python benchmarks/tables.py --check   # exit 1 when a block is stale
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BENCH_README = ROOT / "benchmarks" / "README.md"


def result(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        msg = f"{path.relative_to(ROOT)} is missing: run the benchmark that writes it (see benchmarks/README.md)"
        raise SystemExit(msg)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _n(value: float) -> str:
    """A rate or count with a thousands separator."""
    return f"{value:,.0f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _machine(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (
        f"{m['date']}, {m['cores']} cores, Python {m['python']}, Celery {m['celery']}, kombu {m['kombu']}, "
        f"commit {m.get('commit', 'unknown')}, 1-minute load average {m['load_average_1m']}"
    )


def _spread(values: list[float]) -> str:
    return f"{_n(statistics.median(values))} ({_n(min(values))}–{_n(max(values))})"


# -- README.md ------------------------------------------------------------------------------------------


def lines_table() -> str:
    """Per-line chaos and throughput figures: benchmarks/results/line-*/{chaos,e2e}.json."""
    rows = []
    for directory in sorted(RESULTS.glob("line-*")):
        chaos = json.loads((directory / "chaos.json").read_text())
        run = chaos["reports"][0] if isinstance(chaos, dict) else chaos[0]
        e2e = json.loads((directory / "e2e.json").read_text())
        m = e2e["machine"]
        ratios = [f"{e2e['results'][k]['ratio']:.2f}" for k in _E2E_KEYS]
        outcome = " / ".join(
            str(run[k]) for k in ("succeeded", "dead-lettered", "pending", "lost", "duplicate effects")
        )
        rows.append([f"Celery {m['celery']}, kombu {m['kombu']}", f"{outcome} ({run['seconds']} s)", *ratios])
    headers = [
        "line",
        "chaos: succeeded / dead-lettered / pending / lost / duplicate effects",
        "policy / plain, solo success",
        "solo 10 % transient",
        "prefork success",
        "prefork 10 % transient",
    ]
    return _table(headers, rows)


_E2E_KEYS = ("solo/success", "solo/10% transient", "prefork/success", "prefork/10% transient")
_CHAOS_COLUMNS = (
    "tasks", "main kills", "child kills", "broker restarts", "succeeded", "dead-lettered", "pending", "lost",
    "duplicate effects", "of them killed after the effect", "seconds",
)  # fmt: skip


def chaos_full() -> str:
    """scripts/chaos.py --compare --tasks 10000 --main-kills 24 --child-kills 12 --restarts 3 --json ..."""
    data = result("chaos-full")
    rows = [[r["fetch"], *(str(r.get(c, "not recorded")) for c in _CHAOS_COLUMNS)] for r in data["reports"]]
    caption = f"`{data['machine']['command']}` ({_machine(data)}), seed {data['reports'][0]['seed']}:"
    return caption + "\n\n" + _table(["fetch", *_CHAOS_COLUMNS], rows) + _chaos_problems(data)


def chaos_full_oldest() -> str:
    """The same full run on the oldest line (reliable fetch only): benchmarks/results/line-5.3/chaos-full.json."""
    data = result("line-5.3/chaos-full")
    rows = [[r["fetch"], *(str(r.get(c, "not recorded")) for c in _CHAOS_COLUMNS)] for r in data["reports"]]
    caption = f"`{data['machine']['command']}` ({_machine(data)}), seed {data['reports'][0]['seed']}:"
    body = caption + "\n\n" + _table(["fetch", *_CHAOS_COLUMNS], rows)
    return body + (_chaos_problems(data) or "\n\nThe script reported no problem and no note for this run.")


def _chaos_problems(data: dict[str, Any]) -> str:
    """What the script found wrong with each run (its exit status), as saved in the results file."""
    notes = [f"- {r['fetch']}: {problem}" for r in data["reports"] for problem in r["problems"]]
    notes += [f"- {r['fetch']} (not a failure): {note}" for r in data["reports"] for note in r.get("notes", [])]
    return ("\n\nWhat the script reported for this run:\n\n" + "\n".join(notes)) if notes else ""


def chaos_fetch_window() -> str:
    data = result("chaos-fetch-window")
    columns = ("tasks", "main kills", "succeeded", "pending", "lost")
    rows = [[r["fetch"], *(str(r[c]) for c in columns)] for r in data["reports"]]
    caption = f"`{data['machine']['command']}` ({_machine(data)}):"
    headers = ["fetch", "tasks", "main kills", "succeeded", "pending (stranded in `unacked`)", "lost"]
    return caption + "\n\n" + _table(headers, rows) + _chaos_problems(data)


def fetch_table() -> str:
    data = result("fetch")
    rows = []
    for pool in ("solo", "prefork"):
        r = data["results"][pool]
        rows.append([pool, _spread(r["plain"]), _spread(r["reliable"]), f"{r['ratio']:.2f}"])
    caption = (
        f"`benchmarks/bench_fetch.py --tasks {data['tasks']} --rounds {data['rounds']}` "
        f"(tasks/s, median (min–max) of the rounds; {_machine(data)}):"
    )
    return caption + "\n\n" + _table(["pool", "plain kombu tasks/s", "reliable fetch tasks/s", "ratio"], rows)


# The apps of ``bench_overhead.py --instructions``, as the figures name them (each policy against plain).
_INSTRUCTION_APPS = {
    "bare": "Celery with no failure options at all",
    "plain": "plain Celery, retry/timeout/late-ack options by decorator",
    "no-redelivery": "policy: the same options in YAML, dead letters, hooks",
    "full": "… and `ack.max_redeliveries`",
    "breaker": "… and `max_redeliveries` and a closed circuit breaker",
    "idempotency": "… and `max_redeliveries` and an idempotency key",
}


def _added(data: dict[str, Any], label: str, over: str = "plain") -> float:
    med = data["instructions_per_call_median"]
    return float(med[label] - med[over])


def _agree(data: dict[str, Any]) -> str:
    """How far apart the repeated counts of an app are at most, in per cent of its count."""
    return f"{max(data['repeat_spread_pct'].values()):.2g} %"


def performance_summary() -> str:
    ins, e2e, fetch = result("overhead-instructions"), result("e2e")["results"], result("fetch")["results"]
    boot, check, dlq = result("boot"), result("check"), result("dlq")
    success = sorted(e2e[k]["ratio"] for k in ("solo/success", "prefork/success"))
    transient = sorted(e2e[k]["ratio"] for k in ("solo/10% transient", "prefork/10% transient"))
    fetch_ratios = sorted(fetch[k]["ratio"] for k in ("solo", "prefork"))
    plain = ins["instructions_per_call_median"]["plain"]
    wall = ins["wall_us_median"]

    def span(values: list[float]) -> str:
        low, high = f"{values[0]:.2f}", f"{values[-1]:.2f}"
        return low if low == high else f"{low}–{high}"

    return (
        f"In short ({ins['machine']['cores']} cores, Python {ins['machine']['python']}, "
        f"Celery {ins['machine']['celery']}): per task through the worker's tracer, counted in instructions by "
        f"callgrind (a count the machine's load does not change: the {ins['repeats']} counts of each app agree "
        f"within {_agree(ins)}), a retry/timeout policy adds {_added(ins, 'no-redelivery'):+,.0f} instructions over "
        f"plain Celery with the same options ({_added(ins, 'no-redelivery') / plain * 100:+.1f} % of plain's "
        f"{plain:,.0f}), {_added(ins, 'full'):+,.0f} with `max_redeliveries`, {_added(ins, 'breaker'):+,.0f} "
        f"with a closed circuit breaker as well, and {_added(ins, 'idempotency'):+,.0f} with an idempotency key "
        "(the worker process's own work; the key's Redis round trips are waiting, which the wall clock shows); "
        f"by wall clock in the same run (load {ins['load_average_1m_wall']}) plain {wall['plain']:.1f} µs, the "
        f"policy {wall['full']:.1f} µs and with an idempotency key {wall['idempotency']:.0f} µs a task; "
        f"end-to-end throughput on a real worker at {span(success)} of plain Celery on the success path and "
        f"{span(transient)} with 10 % transient failures; reliable fetch at "
        f"{span(fetch_ratios)} of kombu's own fetch. Not yet at their goals: booting "
        f"{boot['tasks']:,} tasks with {boot['globs'] + boot['exact']:,} policy entries "
        f"({(boot['policy_ms'] - boot['bare_finalize_ms']) / 1000:.1f} s over Celery's own finalize), "
        f"`check --all-envs` on that file ({check['process_s']:.1f} s), and `dlq replay` "
        f"({_n(dlq['replay_per_s'])} records/s here with `--batch {dlq['batch']}`"
        + (
            f", {_n(dlq['pipeline_replay_per_s'])}/s pipelined, {dlq['pipeline_replay_per_s'] / dlq['send_task_loop_per_s']:.1f}× "
            f"a `send_task` loop in the same run at load {dlq['machine']['load_average_1m']}"
            if "pipeline_replay_per_s" in dlq
            else ""
        )
        + ")."
    )


_DELAYED_LINES = ("line-5.7", "line-5.3")  # newest, oldest: the columns of README.md's reliability table
_RSS_ROW = "| worker RSS growth with 20,000 retries parked for 1 h"
_THROUGHPUT_ROW = "| end-to-end throughput, delayed delivery on vs off"


def _delayed(line: str) -> dict[str, Any] | None:
    path = RESULTS / line / "delayed.json"
    return json.loads(path.read_text()) if path.exists() else None


def _mb(value: float) -> str:
    return f"{value:+.1f} MB"


def _parked_cell(row: dict[str, Any], total: int) -> str:
    where = (
        f"all {row['held_unacked']:,} held in `unacked`"
        if row["held_unacked"]
        else f"none held, {row['in_delayed_set']:,} in the delayed set"
    )
    if row["held_unacked"] and row["in_delayed_set"]:
        where = f"{row['held_unacked']:,} held in `unacked`, {row['in_delayed_set']:,} in the delayed set"
    if not row["held_unacked"] and row["in_delayed_set"] != total:
        where = f"none held, {row['in_delayed_set']:,} of {total:,} in the delayed set"
    return (
        f"{_mb(row['warm_growth_mb'])} warm, {_mb(row['cold_growth_mb'])} cold, "
        f"{row['slope_kb_per_parked']:.2f} KB per parked retry; {where}"
    )


def _ratio_cell(data: dict[str, Any]) -> str:
    t = data["throughput"]
    ratios, loads = t["round_ratios"], t["load_1m_per_round"]
    spread = max(ratios) - min(ratios)
    verdict = "≥ 0.98 ✔" if t["ratio"] >= 0.98 else "below 0.98"
    if spread > 0.04:  # the rounds disagree by more than the 2 % the goal asks to resolve
        verdict += f"; the rounds spread over {spread:.2f}, so this run cannot resolve 2 %"
    return (
        f"ratio of medians {t['ratio']:.2f}, median of the rounds' ratios {statistics.median(ratios):.2f} "
        f"({t['tasks']:,} tasks × {t['rounds']} rounds alternating, per-round {min(ratios):.2f}–{max(ratios):.2f}, "
        f"load {min(loads)}–{max(loads)}; goal ≥ 0.98: {verdict})"
    )


def delayed_rows() -> list[str]:
    """README.md's two bench_delayed.py rows: newest line in the Celery columns, oldest in the last one."""
    new, old = (_delayed(line) for line in _DELAYED_LINES)
    if new is None:
        raise SystemExit("benchmarks/results/line-5.7/delayed.json is missing: run benchmarks/bench_delayed.py")
    total = new["parked"]
    p, c = new["parked_results"]["plain Celery"], new["parked_results"]["celery-policy"]
    oldest = "not run"
    if old is not None:
        op, oc = old["parked_results"]["plain Celery"], old["parked_results"]["celery-policy"]
        oldest = (
            f"plain Celery {_mb(op['warm_growth_mb'])} warm ({_mb(op['cold_growth_mb'])} cold, "
            f"{op['slope_kb_per_parked']:.2f} KB each, {op['held_unacked']:,} held); celery-policy "
            f"{_mb(oc['warm_growth_mb'])} warm ({_mb(oc['cold_growth_mb'])} cold, "
            f"{oc['slope_kb_per_parked']:.2f} KB each, {oc['in_delayed_set']:,} in the delayed set) "
            f"(load {old['machine']['load_average_1m']})"
        )
    what = (
        f"{_RSS_ROW[2:]} (`benchmarks/bench_delayed.py`, solo; goal < 30 MB). Main-process VmRSS after "
        f"{total:,} parked, less: warm = after {new['warmup']:,} failures retried at once, cold = before any failure; "
        f"per parked retry = from {new['first']:,} to {total:,} parked (newest line, load {new['machine']['load_average_1m']})"
    )
    rss = f"| {what} | {_parked_cell(p, total)} | {_parked_cell(c, total)} | {oldest} |"
    old_ratio = _ratio_cell(old) if old is not None and old.get("throughput") else "not run"
    ratio = (
        f"{_THROUGHPUT_ROW} (`bench_delayed.py`, 10 % transient, retried at once) | | {_ratio_cell(new)} "
        f"| {old_ratio} |"
    )
    return [rss, ratio]


def reliability_table() -> str:
    """README.md's leases/delayed-delivery table: the tests' rows as written there, the bench_delayed.py rows made here."""
    text = README.read_text()
    match = re.search(r"<!-- tables\.py:reliability -->\n(.*?)\n<!-- /tables\.py:reliability -->", text, re.S)
    if match is None:
        raise SystemExit("README.md has no <!-- tables.py:reliability --> block")
    rss, ratio = delayed_rows()
    lines = [
        rss if line.startswith(_RSS_ROW) else ratio if line.startswith(_THROUGHPUT_ROW) else line
        for line in match.group(1).splitlines()
    ]
    return "\n".join(lines)


def delayed_table() -> str:
    """benchmarks/README.md: every figure of bench_delayed.py, one column per line."""
    runs = [(line, data) for line in _DELAYED_LINES if (data := _delayed(line)) is not None]
    headers = ["what", *(f"Python {d['machine']['python']}, Celery {d['machine']['celery']}, kombu "
                         f"{d['machine']['kombu']}" for _, d in runs)]  # fmt: skip
    first = runs[0][1]
    rows: list[list[str]] = []
    for name in ("plain Celery", "celery-policy"):
        r = [d["parked_results"][name] for _, d in runs]
        rows += [
            [f"{name}: RSS growth, warm → {first['parked']:,} parked (goal < 30 MB)",
             *(_mb(x["warm_growth_mb"]) for x in r)],
            [f"{name}: RSS growth, cold → {first['parked']:,} parked", *(_mb(x["cold_growth_mb"]) for x in r)],
            [f"{name}: … of which the warm-up ({first['warmup']:,} failures retried at once, nothing held)",
             *(_mb(x["warmup_growth_mb"]) for x in r)],
            [f"{name}: per parked retry, {first['first']:,} → {first['parked']:,} parked",
             *(f"{x['slope_kb_per_parked']:.2f} KB" for x in r)],
            [f"{name}: held in `unacked` / in the delayed set",
             *(f"{x['held_unacked']:,} / {x['in_delayed_set']:,}" for x in r)],
            [f"{name}: RSS cold / warm / {first['first']:,} / {first['parked']:,} parked (load at each)",
             *(" / ".join(f"{x['steps'][k]['rss_mb']:.1f}" for k in ("cold", "warm", "first", "parked"))
               + " MB (" + " / ".join(str(x["steps"][k]["load_1m"]) for k in ("cold", "warm", "first", "parked"))
               + ")" for x in r)],
        ]  # fmt: skip
    rows.append(["control: celery-policy with `gc.collect()` after every task, the warm-up's growth",
                 *(_mb(d["gc_control"]["warmup_growth_mb"]) for _, d in runs)])  # fmt: skip
    for label, key in (("on", "on"), ("off", "off")):
        rows.append([f"throughput with delayed delivery {label}, tasks/s, median (min–max)",
                     *(_spread(d["throughput"][key]) if d.get("throughput") else "not run" for _, d in runs)])  # fmt: skip
    rows.append(["… ratio on/off (goal ≥ 0.98)",
                 *(_ratio_cell(d) if d.get("throughput") else "not run" for _, d in runs)])  # fmt: skip
    machines = "\n".join(f"- `results/{line}/delayed.json`: {_machine(d)}" for line, d in runs)
    return _table(headers, rows) + "\n\n" + machines


# -- benchmarks/README.md -------------------------------------------------------------------------------


def results_table() -> str:
    full, ins = result("overhead"), result("overhead-instructions")
    e2e, fetch, boot, check = result("e2e"), result("fetch"), result("boot"), result("check")
    dlq, dlq1, resolve = result("dlq"), result("dlq-batch1"), result("resolve")
    med, wall = ins["instructions_per_call_median"], ins["wall_us_median"]

    def instructions_row(label: str, what: str, over: str = "plain") -> list[str]:
        added = _added(ins, label, over)
        return [what, f"{med[label]:,.0f} instructions", f"{med[over]:,.0f} instructions",
                f"{added:+,.0f} instructions ({added / med[over] * 100:+.1f} %)"]  # fmt: skip

    rows = [
        instructions_row(
            "no-redelivery",
            "success path through the worker's tracer, instructions per call (callgrind; "
            f"`bench_overhead.py --instructions --calls {ins['calls']}`, [details](#instructions-per-task)), "
            "a retry/timeout policy",
        ),
        instructions_row("full", "… with `max_redeliveries`"),
        instructions_row("breaker", "… with `max_redeliveries` and a closed circuit breaker"),
        instructions_row("idempotency", "… with `max_redeliveries` and an idempotency key (worker process only)"),
        instructions_row("full", "… the policy with `max_redeliveries` vs Celery with no failure options", "bare"),
        [
            f"… wall clock in the same run, µs per call (median of {ins['wall_rounds']} rounds of "
            f"{ins['wall_calls']:,} calls, load {ins['load_average_1m_wall']}), with `max_redeliveries`",
            f"{wall['full']:.2f} µs",
            f"{wall['plain']:.2f} µs",
            f"{wall['plain'] / wall['full']:.2f} ({wall['full'] - wall['plain']:+.2f} µs)",
        ],
        [
            f"… wall clock, with an idempotency key ({ins['wall_calls'] // 10:,} calls a round, private redis-server)",
            f"{wall['idempotency']:.0f} µs",
            f"{wall['plain']:.2f} µs",
            f"{wall['plain'] / wall['idempotency']:.2f} ({wall['idempotency'] - wall['plain']:+.0f} µs)",
        ],
        [
            "exception → decision (classification)",
            f"{full['classify_ns']:.0f} ns",
            f"{full['autoretry_isinstance_ns']:.0f} ns (autoretry's `isinstance` checks)",
            f"{full['autoretry_isinstance_ns'] / full['classify_ns']:.2f}",
        ],
    ]
    for key, label in zip(_E2E_KEYS, ("solo, success", "solo, 10 % transient failures retried",
                                        "prefork -c 1, success", "prefork -c 1, 10 % transient"), strict=True):  # fmt: skip
        r = e2e["results"][key]
        rows.append([
            f"end to end, {label} (`bench_e2e.py --tasks {e2e['tasks']} --rounds {e2e['rounds']}`)",
            f"{_n(statistics.median(r['policy']))} tasks/s",
            f"{_n(statistics.median(r['plain']))} tasks/s",
            f"{r['ratio']:.2f}",
        ])  # fmt: skip
    for pool in ("solo", "prefork"):
        r = fetch["results"][pool]
        rows.append([
            f"reliable fetch on vs off, {pool} (`bench_fetch.py --tasks {fetch['tasks']} --rounds {fetch['rounds']}`)",
            f"{_n(statistics.median(r['reliable']))} tasks/s",
            f"{_n(statistics.median(r['plain']))} tasks/s",
            f"{r['ratio']:.2f}",
        ])  # fmt: skip
    rows += [
        [
            f"boot: `install()` + finalize, {boot['tasks']:,} tasks, {boot['globs']:,} globs + {boot['exact']:,} exact"
            " (`bench_boot.py`)",
            f"{boot['policy_ms']:.0f} ms",
            f"{boot['annotations_ms']:.0f} ms (a `task_annotations` object doing the same glob matching)",
            f"{boot['ratio']:.2f}",
        ],
        ["… Celery's own finalize of those tasks with no annotations (the floor)", "",
         f"{boot['bare_finalize_ms']:.0f} ms", ""],
        ["`check --all-envs`, same file with 5 environments, whole command (`bench_check.py`)",
         f"{check['process_s'] * 1000:.0f} ms", "—", ""],
        ["… of which start-up (`celery-policy --version`)", f"{check['cli_startup_s'] * 1000:.0f} ms", "", ""],
    ]  # fmt: skip
    for data in (dlq, dlq1):
        rows.append([
            f"`dlq replay` of {data['records']:,} records, `--batch {data['batch']}` "
            f"(`bench_dlq.py --batch {data['batch']}`)",
            f"{_n(data['replay_per_s'])} records/s",
            f"{_n(data['send_task_loop_per_s'])} tasks/s (a `send_task` loop)",
            f"{data['ratio']:.2f}",
        ])  # fmt: skip
    if "pipeline_replay_per_s" in dlq:
        rate, spread = dlq["rate_200"], dlq["spread_60s"]
        rows += [
            [f"`dlq replay`, pipelined (the default on Redis), `--batch 500`, {dlq['records']:,} records "
             "(`bench_dlq.py`, same run)",
             f"{_n(dlq['pipeline_replay_per_s'])} records/s",
             f"{_n(dlq['send_task_loop_per_s'])} tasks/s (a `send_task` loop)",
             f"{dlq['pipeline_replay_per_s'] / dlq['send_task_loop_per_s']:.1f}×"],
            [f"`dlq replay --rate {rate['rate']}` over {rate['records']:,} records (same run)",
             f"{rate['achieved_per_s']:.1f} records/s, busiest second {rate['max_in_one_s']}",
             f"target {rate['rate']}", f"{rate['deviation_pct']:+.1f} %"],
            [f"`dlq replay --spread 60s` of {spread['records']:,} records: ETAs read back from the queue (same run)",
             f"span {spread['span_s']:.2f} s, {spread['min_decile']}–{spread['max_decile']} per 6 s slice",
             f"even: {spread['records'] // 10}", ""],
        ]  # fmt: skip
    rows += [
        [f"`dlq list --task 'orders.*'` on a {dlq['list_stream']:,}-record stream ({dlq['list_matches']:,} matches)",
         f"{dlq['list_s']:.2f} s", "—", ""],
        [f"resolve {resolve['names']:,} task names against {resolve['globs']:,} globs, cold (`bench_resolve.py`)",
         f"{resolve['resolve_cold_ms']:.0f} ms",
         f"{resolve['resolve_cold_naive_ms']:.0f} ms (testing every glob with `fnmatchcase`)",
         f"{resolve['speedup_cold']:.1f}× faster"],
    ]  # fmt: skip
    files = ("overhead-instructions", "overhead", "e2e", "fetch", "boot", "check", "dlq", "dlq-batch1",
             "resolve")  # fmt: skip
    machines = "\n".join(f"- `results/{name}.json`: {_machine(result(name))}" for name in files)
    table = _table(["what", "celery-policy", "plain Celery, same options", "ratio"], rows)
    return (
        table
        + "\n\nWhere each row comes from (the machine, the commit and the load when the run ended):\n\n"
        + machines
    )


def instructions_table() -> str:
    """Every ``bench_overhead.py --instructions`` result: this line's (results/) and each line's (results/line-*/)."""
    paths = [RESULTS / "overhead-instructions.json", *sorted(RESULTS.glob("line-*/overhead-instructions.json"))]
    blocks = []
    for path in paths:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        med, plain = data["instructions_per_call_median"], data["instructions_per_call_median"]["plain"]
        rows = []
        for label, what in _INSTRUCTION_APPS.items():
            counts = " / ".join(f"{v:,.0f}" for v in data["instructions_per_call"][label])
            over = (
                "" if label == "plain" else f"{med[label] - plain:+,.0f} ({(med[label] - plain) / plain * 100:+.1f} %)"
            )
            wall = data["wall_us"][label]
            rows.append(
                [f"`{label}`: {what}", counts, over, f"{statistics.median(wall):.2f} ({min(wall):.2f}–{max(wall):.2f})"]
            )
        caption = (
            f"`{data['machine']['command']}` (`{path.relative_to(RESULTS.parent)}`; {_machine(data)}; "
            f"the wall-clock rounds ran at load {data['load_average_1m_wall']}; {data['valgrind']}):"
        )
        headers = [
            "app",
            f"instructions per call, each of the {data['repeats']} counts",
            "over plain",
            f"wall clock µs per call, median (min–max) of {data['wall_rounds']} rounds",
        ]
        blocks.append(caption + "\n\n" + _table(headers, rows))
    return "\n\n".join(blocks)


def resolve_table() -> str:
    data = result("resolve")
    names = data["names"]
    rows = [
        ["`load()`: read, parse, validate, build index", f"{data['load_ms']:.0f} ms", ""],
        [f"resolve {names:,} names, cold (fresh `Policy`)", f"{data['resolve_cold_ms']:.0f} ms",
         f"{data['resolve_cold_ms'] * 1000 / names:.0f} µs"],
        [f"resolve {names:,} names, warm (merges cached)", f"{data['resolve_warm_ms']:.0f} ms",
         f"{data['resolve_warm_ms'] * 1000 / names:.0f} µs"],
        [f"resolve {names:,} names, cold, naive matcher", f"{data['resolve_cold_naive_ms']:.0f} ms",
         f"{data['resolve_cold_naive_ms'] * 1000 / names:.0f} µs"],
        ["match only, `PatternIndex`", f"{data['match_ms']:.0f} ms", f"{data['match_ms'] * 1000 / names:.0f} µs"],
        ["match only, naive `fnmatchcase` over all globs", f"{data['match_naive_ms']:.0f} ms",
         f"{data['match_naive_ms'] * 1000 / names:.0f} µs"],
    ]  # fmt: skip
    caption = (
        f"`{data['machine']['command']}` ({_machine(data)}; median of {data['repeats']} repeats, "
        f"{data['layer_stacks']:,} distinct layer stacks; the index matches {data['speedup_match']:.0f}× and "
        f"resolves cold {data['speedup_cold']:.1f}× faster than testing every glob):"
    )
    return caption + "\n\n" + _table(["step", "median", "per name"], rows)


BLOCKS: dict[Path, dict[str, Callable[[], str]]] = {
    README: {
        "lines": lines_table,
        "chaos-full": chaos_full,
        "chaos-full-oldest": chaos_full_oldest,
        "chaos-fetch-window": chaos_fetch_window,
        "fetch": fetch_table,
        "performance": performance_summary,
        "reliability": reliability_table,
    },
    BENCH_README: {
        "results": results_table,
        "instructions": instructions_table,
        "resolve": resolve_table,
        "delayed": delayed_table,
    },
}


def render(text: str, blocks: dict[str, Callable[[], str]]) -> str:
    """``text`` with every block named in ``blocks`` regenerated; a block without its markers is an error."""
    for name, make in blocks.items():
        pattern = re.compile(
            rf"(<!-- tables\.py:{re.escape(name)} -->\n)(.*?)(<!-- /tables\.py:{re.escape(name)} -->)", re.S
        )
        if not pattern.search(text):
            msg = f"no <!-- tables.py:{name} --> ... <!-- /tables.py:{name} --> block"
            raise SystemExit(msg)
        body = make()

        def replace(match: re.Match[str], body: str = body) -> str:
            return match.group(1) + body + "\n" + match.group(3)

        text = pattern.sub(replace, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale blocks (exit 1)")
    args = parser.parse_args(argv)
    stale = []
    for path, blocks in BLOCKS.items():
        text = path.read_text()
        new = render(text, blocks)
        if new != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("stale figures in " + ", ".join(stale) + ": run .venv/bin/python benchmarks/tables.py")
        return 1
    if not args.check:
        print("rewrote " + (", ".join(stale) if stale else "nothing (up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
