"""Where benchmark scripts write their JSON: benchmarks/results/, or $CELERY_POLICY_BENCH_RESULTS (the smoke test)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import celery
    import kombu

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def save(name: str, data: dict[str, Any]) -> Path:
    directory = Path(os.environ.get("CELERY_POLICY_BENCH_RESULTS") or DEFAULT)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str) + "\n")
    return path
