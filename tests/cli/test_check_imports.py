"""``celery-policy check`` (without ``--app``) imports neither Celery nor a broker client.

Linting is a CI step: it must not pay for Celery's start-up, and it must work
where only the policy files are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("celery", "kombu", "redis", "billiard")

# Runs the console script's entry point in a fresh interpreter and reports, at exit, which of HEAVY it imported.
_WRAPPER = """
import atexit, json, sys
heavy = {heavy!r}

def report():
    loaded = sorted({{name.split(".")[0] for name in sys.modules}} & set(heavy))
    sys.__stderr__.write("\\nIMPORTED " + json.dumps(loaded) + "\\n")

atexit.register(report)
from celery_policy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_check_imports_no_celery_kombu_redis_or_billiard() -> None:
    script = _WRAPPER.format(heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", script, "check", "policies/celery-policy.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems in 1 file" in result.stdout
    marker = [line for line in result.stderr.splitlines() if line.startswith("IMPORTED ")]
    assert marker, result.stderr
    assert json.loads(marker[-1].removeprefix("IMPORTED ")) == []
