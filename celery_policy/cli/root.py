"""The ``celery-policy`` command group and :func:`main`, the console script's entry point.

Each command lives in a module of its own, imported only when that command
runs (``celery-policy check`` does not load the dead-letter or fleet code, nor
Celery and the broker clients they use).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import click

from celery_policy.cli.exit import OK, USAGE

# command name -> "module:attribute" of its click command, in the order `--help` lists them
COMMANDS = {
    "breakers": "celery_policy.cli.breakers:breakers",
    "check": "celery_policy.cli.check:check",
    "delayed": "celery_policy.cli.delayed:delayed",
    "diff": "celery_policy.cli.fleet:diff_command",
    "dlq": "celery_policy.cli.dlq:dlq",
    "explain": "celery_policy.cli.explain:explain",
    "init": "celery_policy.cli.init:init",
    "rules": "celery_policy.cli.rules:rules",
    "schema": "celery_policy.cli.schema:schema",
    "status": "celery_policy.cli.fleet:status",
    "web": "celery_policy.cli.web:web",
}


class _LazyGroup(click.Group):
    """A group whose commands are imported when they are looked up (see ``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="celery-policy", prog_name="celery-policy")
def cli() -> None:
    """Declarative failure handling for Celery: check, explain and apply policy files."""


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
