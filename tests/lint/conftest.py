"""Fixtures for the lint tests: run from the test apps' directory, call the CLI in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _lintkit import APPS, Run

from celery_policy.cli import main


@pytest.fixture
def in_apps_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from tests/lint/apps, as `celery -A` would from a project root."""
    monkeypatch.chdir(APPS)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return APPS


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Call ``celery_policy.cli.main`` in-process and capture its output."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run
