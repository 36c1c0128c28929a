"""README.md and benchmarks/README.md show exactly the figures of the saved benchmark results.

Each figure sits in a block that ``benchmarks/tables.py`` writes from a file in
benchmarks/results/ (itself written by a benchmark script with the command it records).
A changed result with a stale README, or a README figure edited by hand, fails here;
``.venv/bin/python benchmarks/tables.py`` rewrites the blocks.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import tables  # noqa: E402

BLOCKS = [(path, name) for path, blocks in tables.BLOCKS.items() for name in blocks]


@pytest.mark.parametrize(("path", "name"), BLOCKS, ids=[f"{p.name}:{n}" for p, n in BLOCKS])
def test_each_generated_block_matches_its_results_file(path: Path, name: str) -> None:
    text = path.read_text()
    match = re.search(
        rf"<!-- tables\.py:{re.escape(name)} -->\n(.*?)\n<!-- /tables\.py:{re.escape(name)} -->", text, re.S
    )
    assert match is not None, f"{path.name} has no {name} block"
    assert match.group(1) == tables.BLOCKS[path][name](), f"{path.name}: run .venv/bin/python benchmarks/tables.py"


def test_every_results_file_records_machine_versions_and_how_it_was_made() -> None:
    results = ROOT / "benchmarks" / "results"
    for path in sorted([*results.glob("*.json"), *results.glob("line-*/overhead-instructions.json")]):
        machine = json.loads(path.read_text())["machine"]
        for key in ("date", "cores", "python", "celery", "kombu", "load_average_1m", "commit", "command"):
            assert key in machine, (path.name, key)


def test_a_changed_result_makes_its_block_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check has teeth: the same README against an edited results file does not match."""
    results = tmp_path / "results"
    results.mkdir()
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        (results / path.name).write_text(path.read_text())
    data = json.loads((results / "fetch.json").read_text())
    data["results"]["solo"]["ratio"] += 0.5
    (results / "fetch.json").write_text(json.dumps(data))
    monkeypatch.setattr(tables, "RESULTS", results)
    readme = tables.README.read_text()
    assert tables.render(readme, {"fetch": tables.fetch_table}) != readme


def _instruction_results() -> list[Path]:
    results = ROOT / "benchmarks" / "results"
    return [results / "overhead-instructions.json", *sorted(results.glob("line-*/overhead-instructions.json"))]


@pytest.mark.parametrize("path", _instruction_results(), ids=lambda p: str(p.relative_to(ROOT / "benchmarks")))
def test_instruction_counts_follow_from_what_callgrind_counted_and_repeat(path: Path) -> None:
    """Each count is a loop's instructions / N (or (count of 2N calls - count of N) / N); they agree within 1 %."""
    data = json.loads(path.read_text())
    n = data["calls"]
    assert set(data["apps"]) >= set(tables._INSTRUCTION_APPS)
    for app in data["apps"]:
        if data["method"] == "segments":
            per_call = [total / n for total in data["totals"][app]]
        else:
            per_call = [(twice - once) / n for once, twice in data["totals"][app]]
        assert per_call == data["instructions_per_call"][app]
        assert len(per_call) == data["repeats"] >= 2, app
        assert (max(per_call) - min(per_call)) / min(per_call) < 0.01, (app, per_call)


def test_a_changed_instruction_count_makes_the_performance_sentence_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        (results / path.name).write_text(path.read_text())
    data = json.loads((results / "overhead-instructions.json").read_text())
    data["instructions_per_call_median"]["full"] += 1000
    (results / "overhead-instructions.json").write_text(json.dumps(data))
    monkeypatch.setattr(tables, "RESULTS", results)
    readme = tables.README.read_text()
    assert tables.render(readme, {"performance": tables.performance_summary}) != readme
