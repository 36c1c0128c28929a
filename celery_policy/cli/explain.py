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
    own_retries: str | None = None,
    app: str | None = None,
) -> int:
    """Print ``task``'s effective policy to stdout; diagnostics go to stderr.

    ``files`` default to ``files`` of ``[tool.celery-policy]`` in ``pyproject.toml``, else
    :func:`celery_policy.loader.default_policy_paths`; ``env`` to ``$CELERY_POLICY_ENV``, else
    the table's ``env``. ``registered``: the task names of the loaded app; a name it lacks is an
    error with the closest name as a hint (a typo would otherwise print the defaults).
    ``own_retries``: what the task's own code does with retries (see :func:`describe_own_retries`),
    printed after the report. Returns 0, 1 for an invalid policy, unknown environment or unknown
    task, 2 for an unreadable file or a bad ``pyproject.toml``.
    """
    if registered is not None and task not in registered:
        from celery_policy.patterns import unmatched_names

        suggestion = next((close for _, close in unmatched_names([task], registered)), None)
        hint = f" — did you mean '{suggestion}'?" if suggestion else ""
        sys.stderr.write(f"error: no task named '{task}' in the app{hint}\n")
        return FAILED
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
    if own_retries and fmt != "json":
        text += f"\n{own_retries}\n"
    if app:  # how many messages wait in the Redis broker's delayed set (delayed delivery), per queue
        waiting, is_redis = _delayed_counts(app)
        if fmt == "json":
            import json

            text = json.dumps({**json.loads(text), "delayed": waiting}, indent=2, ensure_ascii=False) + "\n"
        else:
            per_queue = ", ".join(f"{queue} {count}" for queue, count in (waiting or {}).items()) or "none"
            if waiting is None:
                per_queue = "cannot read them, the broker did not answer" if is_redis else "not a Redis broker"
            text += f"delayed messages in the broker: {per_queue}\n"
    sys.stdout.write(text)
    return OK


def describe_own_retries(task: object) -> str | None:
    """A line on the task's hand-written retries (``self.retry()`` calls, reads of its own options), or None."""
    from celery_policy.taskoptions import own_retries

    own = own_retries(task)
    if not (own.calls_retry or own.reads):
        return None
    parts = []
    if own.calls_retry:
        parts.append("calls self.retry()")
    if own.reads:
        names = ", ".join(sorted(own.read_options))
        parts.append(f"reads its own {names} (at {own.where(sorted(own.read_options)[0])})")
    return "the task's own code " + " and ".join(parts) + ": see retry.self_retry above for what the policy does there"


def _delayed_counts(app: str) -> tuple[dict[str, int] | None, bool]:
    """The app's broker's delayed counts (None: not Redis, or no answer), and whether the broker is Redis."""
    from celery_policy import appinfo
    from celery_policy.cli.delayed import delayed_counts

    try:
        celery_app = appinfo.import_app(app)
    except appinfo.AppLoadError as exc:
        raise click.UsageError(str(exc)) from exc
    url = celery_app.conf.broker_url
    is_redis = bool(url) and str(url).split("://", 1)[0].lower() in ("redis", "rediss")
    return delayed_counts(url), is_redis


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
@click.option(
    "--app",
    "app",
    help="Celery app module (e.g. proj.celery): an unknown TASK is an error, with a hint; also shows the delayed"
    " messages its Redis broker holds",
)
def explain(task: str, files: tuple[str, ...], env: str | None, fmt: str, app: str | None) -> int:
    """Show TASK's effective policy, where each value came from, and its retry schedule."""
    if app is None:
        return run_explain(task, list(files), env=env, fmt=fmt)
    from celery_policy.appinfo import AppLoadError, import_app

    try:
        tasks = import_app(app, finalize=True).tasks
    except AppLoadError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return USAGE
    note = describe_own_retries(tasks[task]) if task in tasks else None
    return run_explain(task, list(files), env=env, fmt=fmt, registered=set(tasks.keys()), own_retries=note, app=app)
