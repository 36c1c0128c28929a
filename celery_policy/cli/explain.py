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


def run_explain(
    task: str, files: Sequence[str], env: str | None = None, fmt: str = "text", app: str | None = None
) -> int:
    """Print ``task``'s effective policy to stdout; diagnostics go to stderr.

    ``files`` default to :func:`celery_policy.loader.default_policy_paths`, ``env``
    to ``$CELERY_POLICY_ENV``. Returns 0, 1 for an invalid policy or unknown
    environment, 2 for an unreadable file.
    """
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
    if app:  # how many messages wait in the Redis broker's delayed set (delayed delivery), per queue
        waiting = _delayed_counts(app)
        if fmt == "json":
            import json

            text = json.dumps({**json.loads(text), "delayed": waiting}, indent=2, ensure_ascii=False) + "\n"
        else:
            per_queue = ", ".join(f"{queue} {count}" for queue, count in (waiting or {}).items()) or "none"
            text += f"delayed messages in the broker: {per_queue if waiting is not None else 'not a Redis broker'}\n"
    sys.stdout.write(text)
    return OK


def _delayed_counts(app: str) -> dict[str, int] | None:
    from celery_policy import appinfo
    from celery_policy.cli.delayed import delayed_counts

    try:
        celery_app = appinfo.import_app(app)
    except appinfo.AppLoadError as exc:
        raise click.UsageError(str(exc)) from exc
    return delayed_counts(celery_app.conf.broker_url)


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
@click.option("--app", "app", help="Celery app module: also show the delayed messages its Redis broker holds")
def explain(task: str, files: tuple[str, ...], env: str | None, fmt: str, app: str | None) -> int:
    """Show TASK's effective policy, where each value came from, and its retry schedule."""
    return run_explain(task, list(files), env=env, fmt=fmt, app=app)
