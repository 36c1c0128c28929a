"""``celery -A proj policy …``: the celery-policy commands as a Celery sub-command.

Registered through the ``celery.commands`` entry point, so ``celery`` finds it
once celery-policy is installed. Each command runs the same implementation as
the standalone ``celery-policy`` command, with what the loaded app knows:

- ``check`` always runs the ``--app`` cross-checks (CP3xx) against the app given with ``-A``;
- the policy files default to what the app uses: the files it passed to
  ``celery_policy.install`` (else its ``CELERY_POLICY_FILE`` setting, which a
  Django project sets in ``settings.py``), else ``[tool.celery-policy]`` in
  ``pyproject.toml``, else ``$CELERY_POLICY_FILE`` or ``policies/celery-policy.yaml``;
- the environment defaults to the app's (``install(env=…)``, else ``CELERY_POLICY_ENV``);
- ``dlq`` commands use the app's broker as the store and replay target.

Exit codes are those of ``celery-policy`` (0 clean, 1 findings, 2 usage, 3 unreachable).
"""

from __future__ import annotations

import os
from typing import Any

import click

from celery_policy import appinfo
from celery_policy.cli import options
from celery_policy.cli.check import run_check_options
from celery_policy.cli.dlq import run_list, run_purge, run_replay, run_show, run_stats
from celery_policy.cli.explain import describe_own_retries, run_explain
from celery_policy.cli.fleet import run_status
from celery_policy.cli.rules import run_rules
from celery_policy.cli.schema import run_schema
from celery_policy.cli.web import web_options


def _context(ctx: click.Context) -> tuple[Any, str | None]:
    """The app celery loaded and the ``-A`` spec it was loaded from (None: Celery's default app)."""
    root = ctx.find_root()
    obj = getattr(root, "obj", None)
    app = getattr(obj, "app", None)
    spec = root.params.get("app")
    if not isinstance(spec, str) and app is not None:
        spec = appinfo.spec_of(app)  # Celery 5.3 and 5.4 hand commands the loaded app, not the -A text
    return app, spec if isinstance(spec, str) and spec else None


def _app_policy(app: Any) -> tuple[list[str], str | None]:
    """The policy files and environment the app uses (empty / None when it does not say)."""
    if app is None:
        return [], None
    from celery_policy.runtime.install import runtime_for

    runtime = runtime_for(app)
    if runtime is not None:
        return list(runtime.policy.files), runtime.policy.env
    configured = appinfo.setting(app, "CELERY_POLICY_FILE")
    files = [p for p in configured.split(os.pathsep) if p] if configured else []
    return files, appinfo.setting(app, "CELERY_POLICY_ENV")


def _finish(ctx: click.Context, code: int) -> None:
    """Celery runs its commands in click's standalone mode: a return value is lost, so exit with it."""
    ctx.exit(code)


@click.group("policy")
def policy() -> None:
    """celery-policy for this app: check, explain, rules, schema, dlq, web."""


@policy.command()
@options.policy_files_argument
@options.env_option("check the file as seen in this environment (default: the app's)")
@options.check_options
@click.pass_context
def check(
    ctx: click.Context,
    files: tuple[str, ...],
    env: str | None,
    all_envs: bool,
    fmt: str,
    strict: bool,
    select: str | None,
    ignore: str | None,
) -> None:
    """Validate and lint the app's policy (FILES default to the app's), with the app cross-checks."""
    app, spec = _context(ctx)
    app_files, app_env = _app_policy(app)
    if env is None and not all_envs and not files:
        env = app_env
    code = run_check_options(
        list(files) or app_files,
        env=env,
        all_envs=all_envs,
        app=spec,
        fmt=fmt,
        strict=strict,
        select=select,
        ignore=ignore,
    )
    _finish(ctx, code)


@policy.command()
@click.argument("task")
@options.policy_file_option("policy file (default: the app's)")
@options.env_option("environment overlay to apply (default: the app's)")
@options.format_option()
@click.pass_context
def explain(ctx: click.Context, task: str, files: tuple[str, ...], env: str | None, fmt: str) -> None:
    """Show TASK's effective policy under the app's policy, where each value came from, and its retry schedule."""
    app, _ = _context(ctx)
    app_files, app_env = _app_policy(app)
    registered = None
    note = None
    if app is not None:
        app.loader.import_default_modules()  # the task modules, as a worker imports them
        registered = set(app.tasks.keys())
        note = describe_own_retries(app.tasks[task]) if task in registered else None
    paths = list(files) or app_files
    _finish(ctx, run_explain(task, paths, env=env or app_env, fmt=fmt, registered=registered, own_retries=note))


@policy.command()
@click.argument("rule", required=False)
@click.pass_context
def rules(ctx: click.Context, rule: str | None) -> None:
    """List the lint rules, or explain RULE (e.g. CP103)."""
    _finish(ctx, run_rules(rule))


@policy.command()
@options.status_options
@options.env_option("environment of --expect (default: the app's)")
@options.status_format_options
@click.pass_context
def status(ctx: click.Context, expect: tuple[str, ...], env: str | None, fmt: str, timeout: float) -> None:
    """Show which policy each running worker of this app runs; with --expect exit 1 on drift."""
    app, spec = _context(ctx)
    if spec is None:
        raise click.UsageError("celery -A MODULE policy status needs the app's module")
    _, app_env = _app_policy(app)
    _finish(ctx, run_status(spec, list(expect), (env or app_env) if expect else None, fmt, timeout))


@policy.command()
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Print the JSON Schema of the policy file."""
    _finish(ctx, run_schema())


@policy.group()
def dlq() -> None:
    """List, show, replay and purge the app's dead letters."""


def _dlq_defaults(ctx: click.Context, opts: dict[str, Any]) -> dict[str, Any]:
    app, spec = _context(ctx)
    if not opts.get("app") and spec:
        opts["app"] = spec
    if not opts.get("files"):
        opts["files"] = tuple(_app_policy(app)[0])
    return opts


@dlq.command("list")
@options.store_options
@options.filter_options
@options.list_options
@click.pass_context
def dlq_list(ctx: click.Context, /, **opts: Any) -> None:
    """List dead letters, oldest first."""
    _finish(ctx, run_list(**_dlq_defaults(ctx, opts)))


@dlq.command("show")
@click.argument("entry_id")
@options.store_options
@click.pass_context
def dlq_show(ctx: click.Context, /, entry_id: str, **opts: Any) -> None:
    """Show one dead letter with its traceback."""
    _finish(ctx, run_show(entry_id, **_dlq_defaults(ctx, opts)))


@dlq.command("replay")
@options.store_options
@options.filter_options
@options.replay_options
@click.option("--broker", help="broker URL to publish to (default: the app's broker)")
@click.pass_context
def dlq_replay(ctx: click.Context, /, **opts: Any) -> None:
    """Re-publish matching dead letters with new task ids; each is deleted only after the broker took it."""
    _finish(ctx, run_replay(**_dlq_defaults(ctx, opts)))


@dlq.command("stats")
@options.store_options
@options.filter_options
@options.stats_options
@click.pass_context
def dlq_stats(ctx: click.Context, /, **opts: Any) -> None:
    """Count dead letters by task and reason (or --by task,reason,exception,hour)."""
    _finish(ctx, run_stats(**_dlq_defaults(ctx, opts)))


@dlq.command("purge")
@options.store_options
@options.filter_options
@options.purge_options
@click.pass_context
def dlq_purge(ctx: click.Context, /, **opts: Any) -> None:
    """Delete matching dead letters (needs --yes)."""
    _finish(ctx, run_purge(**_dlq_defaults(ctx, opts)))


@policy.command("web")
@web_options
@click.pass_context
def web(ctx: click.Context, /, **opts: Any) -> None:
    """Serve the web console for this app: dead letters, policies, fleet, /metrics."""
    from celery_policy.cli.web import build_config, serve

    app, _ = _context(ctx)
    _finish(ctx, serve(build_config(app=None, celery_app=app, **opts)))
