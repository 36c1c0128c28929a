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

from typing import Any

import click

from celery_policy.cli import FORMATS, _dlq_options, _filter_options, _replay_options, _rule_list

USAGE = 2


def _context(ctx: click.Context) -> tuple[Any, str | None]:
    """The app celery loaded and the ``-A`` spec it was loaded from (None: Celery's default app)."""
    root = ctx.find_root()
    obj = getattr(root, "obj", None)
    app = getattr(obj, "app", None)
    spec = root.params.get("app")
    if not isinstance(spec, str) and app is not None:
        spec = _spec_of(app)  # Celery 5.3 and 5.4 hand commands the loaded app, not the -A text
    return app, spec if isinstance(spec, str) and spec else None


def _spec_of(app: Any) -> str | None:
    """``module:attribute`` of an imported module that holds ``app`` (as ``celery -A`` would have named it)."""
    import sys

    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attribute}"
    return None


def _app_policy(app: Any) -> tuple[list[str], str | None]:
    """The policy files and environment the app uses (empty / None when it does not say)."""
    if app is None:
        return [], None
    from celery_policy.runtime.install import _setting, runtime_for

    runtime = runtime_for(app)
    if runtime is not None:
        return list(runtime.policy.files), runtime.policy.env
    import os

    configured = _setting(app, "CELERY_POLICY_FILE")
    files = [p for p in configured.split(os.pathsep) if p] if configured else []
    return files, _setting(app, "CELERY_POLICY_ENV")


def _finish(ctx: click.Context, code: int) -> None:
    """Celery runs its commands in click's standalone mode: a return value is lost, so exit with it."""
    ctx.exit(code)


@click.group("policy")
def policy() -> None:
    """celery-policy for this app: check, explain, rules, schema, dlq."""


@policy.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--env", "env", help="check the file as seen in this environment (default: the app's)")
@click.option("--all-envs", is_flag=True, help="check the base file and every environment")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="fail on warnings too")
@click.option("--select", help="only these rules (comma-separated codes or prefixes, e.g. CP1,CP205)")
@click.option("--ignore", help="skip these rules (comma-separated codes or prefixes)")
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
    from celery_policy.lint.runner import run_check

    if env and all_envs:
        raise click.UsageError("--env and --all-envs exclude each other")
    app, spec = _context(ctx)
    app_files, app_env = _app_policy(app)
    if env is None and not all_envs and not files:
        env = app_env
    code = run_check(
        list(files) or app_files,
        env=env,
        all_envs=all_envs,
        app=spec,
        fmt=fmt,
        strict=strict,
        select=_rule_list(select),
        ignore=_rule_list(ignore),
    )
    _finish(ctx, code)


@policy.command()
@click.argument("task")
@click.option(
    "--file", "files", multiple=True, type=click.Path(dir_okay=False), help="policy file (default: the app's)"
)
@click.option("--env", "env", help="environment overlay to apply (default: the app's)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def explain(ctx: click.Context, task: str, files: tuple[str, ...], env: str | None, fmt: str) -> None:
    """Show TASK's effective policy under the app's policy, where each value came from, and its retry schedule."""
    from celery_policy.explain import run_explain

    app, _ = _context(ctx)
    app_files, app_env = _app_policy(app)
    _finish(ctx, run_explain(task, list(files) or app_files, env=env or app_env, fmt=fmt))


@policy.command()
@click.argument("rule", required=False)
@click.pass_context
def rules(ctx: click.Context, rule: str | None) -> None:
    """List the lint rules, or explain RULE (e.g. CP103)."""
    from celery_policy.lint.runner import run_rules

    _finish(ctx, run_rules(rule))


@policy.command()
@click.option(
    "--expect", multiple=True, type=click.Path(dir_okay=False), help="policy file every worker should run (repeatable)"
)
@click.option("--env", "env", help="environment of --expect (default: the app's)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--timeout", type=float, default=2.0, show_default=True, help="seconds to wait for replies")
@click.pass_context
def status(ctx: click.Context, expect: tuple[str, ...], env: str | None, fmt: str, timeout: float) -> None:
    """Show which policy each running worker of this app runs; with --expect exit 1 on drift."""
    from celery_policy.fleet_commands import run_status

    app, spec = _context(ctx)
    if spec is None:
        raise click.UsageError("celery -A MODULE policy status needs the app's module")
    _, app_env = _app_policy(app)
    _finish(ctx, run_status(spec, list(expect), (env or app_env) if expect else None, fmt, timeout))


@policy.command()
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Print the JSON Schema of the policy file."""
    from celery_policy.schema import render_schema

    click.echo(render_schema(), nl=False)
    _finish(ctx, 0)


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
@_dlq_options
@_filter_options
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def dlq_list(ctx: click.Context, /, **opts: Any) -> None:
    """List dead letters, oldest first."""
    from celery_policy.deadletter.commands import run_list

    _finish(ctx, run_list(**_dlq_defaults(ctx, opts)))


@dlq.command("show")
@click.argument("entry_id")
@_dlq_options
@click.pass_context
def dlq_show(ctx: click.Context, /, entry_id: str, **opts: Any) -> None:
    """Show one dead letter with its traceback."""
    from celery_policy.deadletter.commands import run_show

    _finish(ctx, run_show(entry_id, **_dlq_defaults(ctx, opts)))


@dlq.command("replay")
@_dlq_options
@_filter_options
@_replay_options
@click.option("--broker", help="broker URL to publish to (default: the app's broker)")
@click.pass_context
def dlq_replay(ctx: click.Context, /, **opts: Any) -> None:
    """Re-publish matching dead letters with new task ids; each is deleted only after the broker took it."""
    from celery_policy.deadletter.commands import run_replay

    _finish(ctx, run_replay(**_dlq_defaults(ctx, opts)))


@dlq.command("stats")
@_dlq_options
@_filter_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def dlq_stats(ctx: click.Context, /, **opts: Any) -> None:
    """Count dead letters by task and reason."""
    from celery_policy.deadletter.commands import run_stats

    _finish(ctx, run_stats(**_dlq_defaults(ctx, opts)))


@dlq.command("purge")
@_dlq_options
@_filter_options
@click.option("--yes", is_flag=True, help="really delete")
@click.pass_context
def dlq_purge(ctx: click.Context, /, **opts: Any) -> None:
    """Delete matching dead letters (needs --yes)."""
    from celery_policy.deadletter.commands import run_purge

    _finish(ctx, run_purge(**_dlq_defaults(ctx, opts)))
