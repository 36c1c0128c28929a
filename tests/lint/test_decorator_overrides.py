"""CP304 sees decorator options also when the app already ran celery_policy.install()."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

POLICY = """\
version: 1
tasks:
  orders.charge:
    timeout: {hard: 90s}
"""


def test_decorator_options_are_reported_when_the_app_installed_the_policy(
    in_apps_dir: Path, run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    monkeypatch.setenv("LINTAPP_INSTALL_POLICY", str(policy))
    monkeypatch.delitem(sys.modules, "lintapp_decorated", raising=False)
    result = run_cli("check", str(policy), "--app", "lintapp_decorated", "--format", "json")
    findings = [f for f in json.loads(result.out)["findings"] if f["code"] == "CP304"]
    assert [f["message"] for f in findings] == [
        "task 'orders.charge' sets time_limit=60 in its decorator; "
        'the policy\'s tasks."orders.charge".timeout.hard wins'
    ]
    assert findings[0]["line"] == 4
    assert result.code == 0  # a warning
    # the installed policy really won on the task class
    app = sys.modules["lintapp_decorated"].app
    assert app.tasks["orders.charge"].time_limit == 90.0
