"""The ``celery-policy`` command line: argument parsing and exit codes only."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

OK = 0  # clean (warnings allowed unless --strict)
LINT_FAILED = 1  # findings of error severity (or warnings with --strict)
USAGE = 2  # bad arguments or an unreadable file
CONNECT = 3  # a broker or store could not be reached

FORMATS = ["text", "json", "github", "sarif"]  # sarif: SARIF 2.1.0 for code-scanning dashboards


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="celery-policy", prog_name="celery-policy")
def cli() -> None:
    """Declarative failure handling for Celery: check, explain and apply policy files."""


def _rule_list(value: str | None) -> list[str]:
    return [part.strip().upper() for part in (value or "").split(",") if part.strip()]


@cli.command()
# FILES may be omitted: then [tool.celery-policy] files in pyproject.toml, else $CELERY_POLICY_FILE or the default path.
@click.argument("files", nargs=-1, required=False, type=click.Path(dir_okay=False))
@click.option("--env", "env", help="check the file as seen in this environment")
@click.option("--all-envs", is_flag=True, help="check the base file and every environment")
@click.option("--app", "app", help="Celery app module (e.g. proj.celery) for the CP3xx cross-checks")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="fail on warnings too")
@click.option("--select", help="only these rules (comma-separated codes or prefixes, e.g. CP1,CP205)")
@click.option("--ignore", help="skip these rules (comma-separated codes or prefixes)")
@click.option("--diff", "diff_env", metavar="ENV", help="then print what --env changes relative to ENV (text)")
def check(
    files: tuple[str, ...],
    env: str | None,
    all_envs: bool,
    app: str | None,
    fmt: str,
    strict: bool,
    select: str | None,
    ignore: str | None,
    diff_env: str | None = None,
) -> int:
    """Validate policy FILES (merged in order; default: pyproject.toml [tool.celery-policy] files) and lint them."""
    from celery_policy.lint.runner import run_check

    if env and all_envs:
        raise click.UsageError("--env and --all-envs exclude each other")
    if diff_env is not None and (all_envs or fmt != "text"):
        raise click.UsageError("--diff needs text output and no --all-envs (JSON: diff FILE FILE --old-env --new-env)")
    code = run_check(
        list(files),
        env=env,
        all_envs=all_envs,
        app=app,
        fmt=fmt,
        strict=strict,
        select=_rule_list(select),
        ignore=_rule_list(ignore),
    )
    if diff_env is not None and code != USAGE:  # the diff is for review; the check alone sets the exit code
        from celery_policy.fleet_commands import run_env_diff

        click.echo()
        run_env_diff(list(files), old_env=diff_env, new_env=env, app=app)
    return code


@cli.command()
@click.argument("rule", required=False)
def rules(rule: str | None) -> int:
    """List the lint rules, or explain RULE (e.g. CP103) with a bad and a good example."""
    from celery_policy.lint.runner import run_rules

    return run_rules(rule)


@cli.command()
@click.argument("task")
@click.option("--file", "files", multiple=True, type=click.Path(dir_okay=False), help="policy file (repeatable)")
@click.option("--env", "env", help="environment overlay to apply")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def explain(task: str, files: tuple[str, ...], env: str | None, fmt: str) -> int:
    """Show TASK's effective policy, where each value came from, and its retry schedule."""
    from celery_policy.explain import run_explain

    return run_explain(task, list(files), env=env, fmt=fmt)


@cli.command()
def schema() -> int:
    """Print the JSON Schema of the policy file."""
    from celery_policy.schema import render_schema

    click.echo(render_schema(), nl=False)
    return OK


# --- fleets: status and diff ----------------------------------------------------------------


@cli.command()
@click.option("--app", "app", required=True, help="Celery app module whose workers are asked (e.g. proj.celery)")
@click.option(
    "--expect", multiple=True, type=click.Path(dir_okay=False), help="policy file every worker should run (repeatable)"
)
@click.option("--env", "env", help="environment of --expect")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--timeout", type=float, default=2.0, show_default=True, help="seconds to wait for replies")
def status(app: str, expect: tuple[str, ...], env: str | None, fmt: str, timeout: float) -> int:
    """Show which policy each running worker runs, grouped by fingerprint; with --expect exit 1 on drift."""
    from celery_policy.fleet_commands import run_status

    if env is not None and not expect:
        raise click.UsageError("--env applies to --expect")
    return run_status(app, list(expect), env, fmt, timeout)


@cli.command("diff")
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--env", "env", help="environment of both files")
@click.option("--old-env", help="environment of OLD (default: --env)")
@click.option("--new-env", help="environment of NEW (default: --env)")
@click.option("--app", "app", help="compare the app's tasks (default: tasks named in either file, and defaults)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def diff_command(
    old: str, new: str, env: str | None, old_env: str | None, new_env: str | None, app: str | None, fmt: str
) -> int:
    """Print the resolved difference of two policy files, task by task and field by field (exit 1 if any)."""
    from celery_policy.fleet_commands import run_diff

    return run_diff([old], [new], old_env=old_env or env, new_env=new_env or env, app=app, fmt=fmt)


@cli.command()
@click.option("--app", "app", required=True, help="Celery app module to read, e.g. proj.celery")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write the policy here (default: stdout)")
@click.option("--force", is_flag=True, help="overwrite --output if it exists")
def init(app: str, output: str | None, force: bool) -> int:
    """Write a policy equivalent to APP's decorator options and app.conf (a one-step migration)."""
    from celery_policy.init import run_init

    return run_init(app, output, force=force)


# --- dead letters ---------------------------------------------------------------------------


def _dlq_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--url", help="Redis URL of the store (default: the policy's dead_letter_store.url or the app's broker)"
            ),
            click.option(
                "--file", "files", multiple=True, type=click.Path(dir_okay=False), help="policy file (repeatable)"
            ),
            click.option(
                "--app", "app", help="Celery app module; its broker is the default store and the replay target"
            ),
            click.option("--stream", help="stream name (default: from the policy, else celery-policy:dead)"),
        ]
    ):
        func = option(func)
    return func


def _filter_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--task", "task", help="task name or glob, e.g. 'orders.*'"),
            click.option("--reason", type=click.Choice(list(_REASONS)), help="only records with this reason"),
            click.option("--since", help="only records younger than this duration, e.g. 1h"),
            click.option("--id", "ids", multiple=True, help="stream entry id (repeatable)"),
        ]
    ):
        func = option(func)
    return func


_REASONS = ("exhausted", "permanent", "unknown", "unknown_exhausted", "deadline", "redelivery_limit", "time_limit")


@cli.group()
def dlq() -> None:
    """List, show, replay and purge dead letters."""


@dlq.command("list")
@_dlq_options
@_filter_options
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def dlq_list(**opts: Any) -> int:
    """List dead letters, oldest first."""
    from celery_policy.deadletter.commands import run_list

    return run_list(**opts)


@dlq.command("show")
@click.argument("entry_id")
@_dlq_options
def dlq_show(entry_id: str, **opts: Any) -> int:
    """Show one dead letter with its traceback."""
    from celery_policy.deadletter.commands import run_show

    return run_show(entry_id, **opts)


def _replay_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--dry-run", is_flag=True, help="say what would be replayed, change nothing"),
            click.option(
                "--batch",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="delete records in batches of N after publishing them: faster, but if the store fails "
                "mid-batch up to N records stay and may run twice on the next replay",
            ),
            click.option("--yes", is_flag=True, help="replay without asking (needed without a terminal)"),
            click.option("--queue", help="publish the replayed tasks to this queue instead of the one they failed on"),
            click.option(
                "--allow-redacted",
                is_flag=True,
                help="also replay records whose arguments were redacted (they get '***')",
            ),
        ]
    ):
        func = option(func)
    return func


@dlq.command("replay")
@_dlq_options
@_filter_options
@_replay_options
@click.option("--broker", help="broker URL to publish to (default: the app's broker, else the store's Redis)")
def dlq_replay(**opts: Any) -> int:
    """Re-publish matching dead letters with new task ids; each is deleted only after the broker took it."""
    from celery_policy.deadletter.commands import run_replay

    return run_replay(**opts)


@dlq.command("stats")
@_dlq_options
@_filter_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def dlq_stats(**opts: Any) -> int:
    """Count dead letters by task and reason."""
    from celery_policy.deadletter.commands import run_stats

    return run_stats(**opts)


@dlq.command("purge")
@_dlq_options
@_filter_options
@click.option("--yes", is_flag=True, help="really delete")
def dlq_purge(**opts: Any) -> int:
    """Delete matching dead letters (needs --yes)."""
    from celery_policy.deadletter.commands import run_purge

    return run_purge(**opts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script exits with it)."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="celery-policy", standalone_mode=False
        )
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return USAGE
    return result if isinstance(result, int) else OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
