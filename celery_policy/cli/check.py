"""``celery-policy check``: validate and lint policy files, print the report, exit 0, 1 or 2.

The pipeline is :mod:`celery_policy.lint.engine`; this module adds the project
settings (``[tool.celery-policy]``, :mod:`.project`), the default files, the
rendering and the exit code. Nothing raises out of :func:`run_check`.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from celery_policy.cli import options
from celery_policy.cli.exit import USAGE
from celery_policy.cli.project import ProjectConfig, ProjectConfigError, find_project_config


def run_check(
    files: Sequence[str],
    *,
    env: str | None = None,
    all_envs: bool = False,
    app: str | None = None,
    fmt: str = "text",
    strict: bool = False,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
    project: ProjectConfig | bool | None = True,
) -> int:
    """Check policy ``files`` and print the report; return the exit code (0 clean, 1 findings, 2 usage).

    ``project=True`` reads ``[tool.celery-policy]`` from the nearest ``pyproject.toml``
    (see :func:`find_project_config`); pass a :class:`ProjectConfig`, or False/None for none.
    Explicit arguments win: ``files``, ``env``/``all_envs``, ``app`` and ``select`` replace
    the configured values, ``ignore`` adds to them, and ``strict`` turns strictness on;
    ``severity`` and ``consumer-timeout`` come from the configuration only.
    """
    from celery_policy.lint.context import LintOptions
    from celery_policy.lint.engine import CheckUsageError, check
    from celery_policy.lint.report import render, use_color
    from celery_policy.loader import default_policy_paths

    try:
        config = find_project_config() if project is True else project or None
        if config is not None:
            files, env, all_envs, app, strict, select, ignore = config.apply(
                files, env=env, all_envs=all_envs, app=app, strict=strict, select=select, ignore=ignore
            )
        if not files:
            files = default_policy_paths()
        report = check(
            files,
            env=env,
            all_envs=all_envs,
            app=app,
            strict=strict,
            select=select,
            ignore=ignore,
            severity=config.severity if config is not None else (),
            options=LintOptions(consumer_timeout_s=config.consumer_timeout_s if config is not None else None),
        )
    except (CheckUsageError, ProjectConfigError) as exc:
        click.echo(f"celery-policy check: error: {exc}", err=True)
        return USAGE
    except Exception as exc:  # the last guard: a message, never a traceback
        click.echo(f"celery-policy check: internal error: {type(exc).__name__}: {exc} (please report this)", err=True)
        return USAGE
    for warning in report.notes:
        click.echo(f"celery-policy check: warning: {warning}", err=True)
    color = fmt == "text" and use_color()
    click.echo(render(report, fmt, color=color), nl=False, color=color)
    return report.exit_code


def run_check_options(
    files: Sequence[str],
    *,
    env: str | None,
    all_envs: bool,
    app: str | None,
    fmt: str,
    strict: bool,
    select: str | None,
    ignore: str | None,
) -> int:
    """:func:`run_check` with the values as ``check`` takes them on the command line (``--select CP1,CP205``)."""
    if env and all_envs:
        raise click.UsageError("--env and --all-envs exclude each other")
    return run_check(
        files,
        env=env,
        all_envs=all_envs,
        app=app,
        fmt=fmt,
        strict=strict,
        select=options.rule_list(select),
        ignore=options.rule_list(ignore),
    )


@click.command()
# FILES may be omitted: then [tool.celery-policy] files in pyproject.toml, else $CELERY_POLICY_FILE or the default path.
@options.policy_files_argument
@options.env_option("check the file as seen in this environment")
@click.option("--app", "app", help="Celery app module (e.g. proj.celery) for the CP3xx cross-checks")
@options.check_options
@click.option("--diff", "diff_env", metavar="ENV", help="then print what --env changes relative to ENV (text)")
def check(
    files: tuple[str, ...],
    env: str | None,
    app: str | None,
    all_envs: bool,
    fmt: str,
    strict: bool,
    select: str | None,
    ignore: str | None,
    diff_env: str | None = None,
) -> int:
    """Validate policy FILES (merged in order; default: pyproject.toml [tool.celery-policy] files) and lint them."""
    if diff_env is not None and (all_envs or fmt != "text"):
        raise click.UsageError("--diff needs text output and no --all-envs (JSON: diff FILE FILE --old-env --new-env)")
    code = run_check_options(
        list(files), env=env, all_envs=all_envs, app=app, fmt=fmt, strict=strict, select=select, ignore=ignore
    )
    if diff_env is not None and code != USAGE:  # the diff is for review; the check alone sets the exit code
        from celery_policy.cli.fleet import run_env_diff

        click.echo()
        run_env_diff(list(files), old_env=diff_env, new_env=env, app=app)
    return code
