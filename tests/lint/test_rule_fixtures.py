"""Every rule fixture case, run through the real CLI: fail cases fire at their lines, pass cases stay quiet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _lintkit import Case, all_cases

CASES = all_cases()


def _celery_below(version: str) -> bool:
    import celery

    installed = tuple(int(part) for part in celery.__version__.split(".")[:2])
    return installed < tuple(int(part) for part in version.split(".")[:2])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_fixture_case(case: Case, tmp_path: Path, in_apps_dir: Path, run_cli: Any) -> None:
    """``needs_celery: "5.5"``: the case is about a Celery 5.5 feature; below it the opposite is expected
    (a fail case stays quiet, a pass case that relies on the feature fires), which tests the version gate."""
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
    kind = case.kind
    if case.extra.get("needs_celery") and _celery_below(str(case.extra["needs_celery"])):
        if kind == "fail":
            assert hits == [], f"{case.code} fired below Celery {case.extra['needs_celery']}: {hits}"
            return
        assert hits, f"{case.code} did not fire below Celery {case.extra['needs_celery']}"
        return
    if kind == "pass":
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
