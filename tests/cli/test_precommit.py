"""`.pre-commit-hooks.yaml`: the real `pre-commit` tool installs celery-policy from a hook repository
and runs `celery-policy check` on the policy files of a project, as a user's one-entry config does.

The hook repository is a fresh git repository holding this checkout's package files; pre-commit
builds its own virtualenv for it with pip (the first run downloads celery-policy's dependencies).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.servers import REPO_ROOT

PRE_COMMIT = str(Path(sys.executable).with_name("pre-commit"))

CLEAN = "version: 1\ndefaults:\n  timeout: {soft: 1m, hard: 2m}\n"
BROKEN = "version: 1\ndefaults:\n  timeout:\n    soft: 6m\n    hard: 5m\n"


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("hook-repo")
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy(REPO_ROOT / name, repo / name)
    shutil.copytree(
        REPO_ROOT / "celery_policy", repo / "celery_policy", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "celery-policy")
    return repo


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")  # one hook environment for the whole module


@pytest.fixture
def project(tmp_path: Path, hook_repo: Path) -> Path:
    rev = git(hook_repo, "rev-parse", "HEAD")
    (tmp_path / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {hook_repo}\n    rev: {rev}\n    hooks:\n      - id: celery-policy-check\n"
    )
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "celery-policy.yaml").write_text(CLEAN)
    (tmp_path / "notes.yaml").write_text(BROKEN)  # not under policies/: not a policy, not checked
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    return tmp_path


def pre_commit(project: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_POLICY", "PRE_COMMIT", "VIRTUAL_ENV"))}
    environ["PRE_COMMIT_HOME"] = str(home)
    return subprocess.run(
        [PRE_COMMIT, "run", *args], cwd=project, env=environ, capture_output=True, text=True, timeout=540, check=False
    )


def test_the_hook_passes_clean_policies_and_blocks_a_broken_one(project: Path, pre_commit_home: Path) -> None:
    done = pre_commit(project, pre_commit_home, "--all-files")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "celery-policy check" in done.stdout
    assert "Passed" in done.stdout

    (project / "policies" / "celery-policy.yaml").write_text(BROKEN)
    git(project, "add", ".")
    done = pre_commit(project, pre_commit_home, "--all-files")
    assert done.returncode == 1
    assert "Failed" in done.stdout
    assert "policies/celery-policy.yaml:4:5: CP103 error: soft timeout 6m is not below hard timeout 5m" in done.stdout
    assert "notes.yaml" not in done.stdout


def test_the_hook_checks_the_files_named_in_pyproject_with_their_suppressions(
    project: Path, pre_commit_home: Path
) -> None:
    """The policy is base + overlay files merged in order, so the hook checks the project's list, not each file."""
    suppressed = BROKEN.replace("soft: 6m", "soft: 6m  # celery-policy: ignore[CP103]")
    (project / "policies" / "orders.yaml").write_text(suppressed)
    (project / "pyproject.toml").write_text(
        '[tool.celery-policy]\nfiles = ["policies/celery-policy.yaml", "policies/orders.yaml"]\nstrict = true\n'
    )
    git(project, "add", ".")
    done = pre_commit(project, pre_commit_home, "--all-files", "--verbose")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no problems in 2 files (1 suppressed)" in done.stdout
