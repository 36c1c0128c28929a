"""``celery-policy schema``: the JSON Schema of the policy file."""

from __future__ import annotations

import click

from celery_policy.cli.exit import OK


def run_schema() -> int:
    """Print the schema; always exit 0."""
    from celery_policy.schema import render_schema

    click.echo(render_schema(), nl=False)
    return OK


@click.command()
def schema() -> int:
    """Print the JSON Schema of the policy file."""
    return run_schema()
