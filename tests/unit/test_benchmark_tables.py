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
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
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
