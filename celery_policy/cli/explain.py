"""``celery-policy explain TASK``: print a task's effective policy (:mod:`celery_policy.explain`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

import click

from celery_policy.cli import options
from celery_policy.cli.exit import FAILED, OK, USAGE
from celery_policy.errors import Diagnostic, PolicyError

ENV_VARIABLE = "CELERY_POLICY_ENV"


def run_explain(task: str, files: Sequence[str], env: str | None = None, fmt: str = "text") -> int:
    """Print ``task``'s effective policy to stdout; diagnostics go to stderr.

    ``files`` default to ``files`` of ``[tool.celery-policy]`` in ``pyproject.toml``, else
    :func:`celery_policy.loader.default_policy_paths`; ``env`` to ``$CELERY_POLICY_ENV``, else
    the table's ``env``. Returns 0, 1 for an invalid policy or unknown environment, 2 for an
    unreadable file or a bad ``pyproject.toml``.
    """
    from celery_policy.cli.project import ProjectConfigError, find_project_config, project_policy
    from celery_policy.explain import explain
    from celery_policy.explain_report import render_json, render_text
    from celery_policy.loader import UnreadableFileError
    from celery_policy.resolve import load

    if env is None:
        env = os.environ.get(ENV_VARIABLE) or None
    try:
        paths, env = project_policy(files, env, find_project_config())
    except ProjectConfigError as exc:
        sys.stderr.write(f"celery-policy explain: error: {exc}\n")
        return USAGE
    try:
        policy = load(paths, env=env, check_imports=False)
        explanation = explain(policy, task)
    except UnreadableFileError as exc:
        _print_error(exc, sys.stderr)
        return USAGE
    except PolicyError as exc:
        _print_error(exc, sys.stderr)
        return FAILED
    text = render_json(explanation) if fmt == "json" else render_text(explanation)
    sys.stdout.write(text)
    return OK


def _print_error(exc: PolicyError, stream: TextIO) -> None:
    if not exc.diagnostics:
        stream.write(f"error: {exc}\n")
        return
    for diagnostic in exc.diagnostics:
        stream.write(_render_diagnostic(diagnostic) + "\n")


def _render_diagnostic(diagnostic: Diagnostic) -> str:
    text = diagnostic.render()
    if diagnostic.hint:
        text += f"\n  help: {diagnostic.hint}"
    return text


@click.command()
@click.argument("task")
@options.policy_file_option("policy file (repeatable)")
@options.env_option("environment overlay to apply")
@options.format_option()
def explain(task: str, files: tuple[str, ...], env: str | None, fmt: str) -> int:
    """Show TASK's effective policy, where each value came from, and its retry schedule."""
    return run_explain(task, list(files), env=env, fmt=fmt)
