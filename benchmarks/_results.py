"""Where benchmark scripts write their JSON: benchmarks/results/, or $CELERY_POLICY_BENCH_RESULTS (the smoke test)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parent / "results"


def commit() -> str:
    """The commit the benchmark ran from, ``-dirty`` when code differed from it ("unknown" outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


# Read when a script imports this module, i.e. when it starts: edits made while it runs do not count.
COMMIT = commit()


def machine() -> dict[str, Any]:
    import celery
    import kombu
    import redis

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "commit": COMMIT,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def save(name: str, data: dict[str, Any]) -> Path:
    directory = Path(os.environ.get("CELERY_POLICY_BENCH_RESULTS") or DEFAULT)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str) + "\n")
    return path
