"""Every rule fixture case, run through the real CLI: fail cases fire at their lines, pass cases stay quiet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _lintkit import Case, all_cases

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_fixture_case(case: Case, tmp_path: Path, in_apps_dir: Path, run_cli: Any) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(case.policy.encode("utf-8", "surrogateescape"))
    argv = ["check", "--format", "json", str(policy), *case.args]
    if case.app:
        argv += ["--app", case.app]
    result = run_cli(*argv)
    assert result.code in (0, 1), result.err
    report = result.json
    hits = [f for f in report["findings"] if f["code"] == case.code]
    assert not [f for f in report["findings"] if "internal error" in f["message"]], report["findings"]
    if case.kind == "pass":
        assert hits == [], f"{case.code} fired on a pass case: {hits}"
        return
    assert hits, f"{case.code} did not fire; findings: {report['findings']}"
    assert all(f["file"] == str(policy) for f in hits)
    assert sorted({f["line"] for f in hits}) == sorted(set(case.lines)), hits
    if hits[0]["severity"] == "error":
        assert result.code == 1
    for needle in case.extra.get("messages", []):
        assert any(needle in f["message"] for f in hits), (needle, hits)
    for needle in case.extra.get("hints", []):
        assert any(needle in (f["hint"] or "") for f in hits), (needle, hits)
