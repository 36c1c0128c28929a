"""``celery-policy explain TASK``: print a task's effective policy (:mod:`celery_policy.explain`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Sequence
from typing import TextIO

import click

from celery_policy.cli import options
from celery_policy.cli.exit import FAILED, OK, USAGE
from celery_policy.errors import Diagnostic, PolicyError

ENV_VARIABLE = "CELERY_POLICY_ENV"


def run_explain(
    task: str,
    files: Sequence[str],
    env: str | None = None,
    fmt: str = "text",
    registered: Collection[str] | None = None,
) -> int:
    """Print ``task``'s effective policy to stdout; diagnostics go to stderr.

    ``files`` default to :func:`celery_policy.loader.default_policy_paths`, ``env``
    to ``$CELERY_POLICY_ENV``. ``registered``: the task names of the loaded app;
    a name it lacks is an error with the closest name as a hint (a typo would
    otherwise print the defaults). Returns 0, 1 for an invalid policy, unknown
    environment or unknown task, 2 for an unreadable file.
    """
    if registered is not None and task not in registered:
        from celery_policy.patterns import unmatched_names

        suggestion = next((close for _, close in unmatched_names([task], registered)), None)
        hint = f" — did you mean '{suggestion}'?" if suggestion else ""
        sys.stderr.write(f"error: no task named '{task}' in the app{hint}\n")
        return FAILED
    from celery_policy.explain import explain
    from celery_policy.explain_report import render_json, render_text
    from celery_policy.loader import UnreadableFileError, default_policy_paths
    from celery_policy.resolve import load

    paths = list(files) or default_policy_paths()
    if env is None:
        env = os.environ.get(ENV_VARIABLE) or None
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
@click.option("--app", "app", help="Celery app module (e.g. proj.celery): an unknown TASK is an error, with a hint")
def explain(task: str, files: tuple[str, ...], env: str | None, fmt: str, app: str | None) -> int:
    """Show TASK's effective policy, where each value came from, and its retry schedule."""
    registered = None
    if app is not None:
        from celery_policy.appinfo import AppLoadError, import_app

        try:
            registered = set(import_app(app, finalize=True).tasks.keys())
        except AppLoadError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return USAGE
    return run_explain(task, list(files), env=env, fmt=fmt, registered=registered)
