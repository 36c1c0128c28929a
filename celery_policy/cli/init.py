"""``celery-policy init --app proj.celery``: write the policy :mod:`celery_policy.migrate` generates."""

from __future__ import annotations

import os

import click

from celery_policy.cli.exit import OK, USAGE


def run_init(app_spec: str, output: str | None, *, force: bool = False) -> int:
    """Write the policy for ``app_spec`` to ``output`` (stdout when None). Returns the exit code."""
    from celery_policy.appinfo import AppLoadError
    from celery_policy.migrate import generate

    if output and os.path.exists(output) and not force:
        click.echo(f"celery-policy init: error: {output} exists; pass --force to overwrite it", err=True)
        return USAGE
    try:
        text = generate(app_spec)
    except AppLoadError as exc:
        click.echo(f"celery-policy init: error: {exc}", err=True)
        return USAGE
    if output is None:
        click.echo(text, nl=False)
        return OK
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(text)
    click.echo(f"wrote {output}; next: celery-policy check {output} --app {app_spec}", err=True)
    return OK


@click.command()
@click.option("--app", "app", required=True, help="Celery app module to read, e.g. proj.celery")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write the policy here (default: stdout)")
@click.option("--force", is_flag=True, help="overwrite --output if it exists")
def init(app: str, output: str | None, force: bool) -> int:
    """Write a policy equivalent to APP's decorator options and app.conf (a one-step migration)."""
    return run_init(app, output, force=force)
