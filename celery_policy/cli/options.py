"""Click options shared by ``celery-policy`` and ``celery -A proj policy``, each declared once.

Choices come from the model, so a value the library writes is a value the
command line accepts (``--reason`` lists every :data:`~celery_policy.deadletter.record.Reason`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, get_args

import click

from celery_policy.deadletter.record import Reason

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("text", "json", "github", "sarif")  # sarif: SARIF 2.1.0 for code-scanning dashboards
TEXT_OR_JSON = ("text", "json")
REASONS = get_args(Reason)


def _all(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """Apply ``decorators`` so that they appear in ``--help`` in the order given."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def rule_list(value: str | None) -> list[str]:
    """``--select`` / ``--ignore``: comma-separated codes or prefixes, codes upper-cased."""
    return [part.strip().upper() for part in (value or "").split(",") if part.strip()]


def format_option(choices: tuple[str, ...] = TEXT_OR_JSON) -> Callable[[F], F]:
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default="text", show_default=True)


def env_option(help_text: str) -> Callable[[F], F]:
    return click.option("--env", "env", help=help_text)


def policy_file_option(help_text: str) -> Callable[[F], F]:
    return click.option("--file", "files", multiple=True, type=click.Path(dir_okay=False), help=help_text)


policy_files_argument = click.argument("files", nargs=-1, required=False, type=click.Path(dir_okay=False))

check_options = _all(
    click.option("--all-envs", is_flag=True, help="check the base file and every environment"),
    format_option(FORMATS),
    click.option("--strict", is_flag=True, help="fail on warnings too"),
    click.option("--select", help="only these rules (comma-separated codes or prefixes, e.g. CP1,CP205)"),
    click.option("--ignore", help="skip these rules (comma-separated codes or prefixes)"),
)

status_options = _all(
    click.option(
        "--expect",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="policy file every worker should run (repeatable)",
    ),
)
status_format_options = _all(
    format_option(),
    click.option("--timeout", type=float, default=2.0, show_default=True, help="seconds to wait for replies"),
)

# --- dlq ------------------------------------------------------------------------------------------

store_options = _all(
    click.option(
        "--url", help="Redis URL of the store (default: the policy's dead_letter_store.url or the app's broker)"
    ),
    policy_file_option("policy file (repeatable)"),
    click.option("--app", "app", help="Celery app module; its broker is the default store and the replay target"),
    click.option("--stream", help="stream name (default: from the policy, else celery-policy:dead)"),
)

filter_options = _all(
    click.option("--task", "task", help="task name or glob, e.g. 'orders.*'"),
    click.option("--reason", type=click.Choice(list(REASONS)), help="only records with this reason"),
    click.option("--since", help="only records younger than this duration, e.g. 1h"),
    click.option("--id", "ids", multiple=True, help="stream entry id (repeatable)"),
)

list_options = _all(
    click.option("--limit", type=int, default=50, show_default=True),
    format_option(),
)

replay_options = _all(
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
    click.option("--rate", help="publish at most this many replays per second, e.g. 200/s (default: unlimited)"),
    click.option("--spread", help="give the replays ETAs spread over this window from now, jittered, e.g. 10m"),
    click.option("--max", "max_records", type=click.IntRange(min=1), help="replay at most N records"),
    click.option("--name", help="incident label: sent in the celery_policy_replay_name header and in log events"),
    click.option(
        "--without-chord",
        is_flag=True,
        help="replay chord members alone (their chord already failed; its body will not run)",
    ),
    click.option(
        "--pipeline/--no-pipeline",
        default=True,
        show_default=True,
        help="on a Redis broker, push pre-serialized messages in pipelines (--no-pipeline: one send_task each; "
        "chosen anyway when the app has before/after_task_publish receivers)",
    ),
    click.option(
        "--events",
        type=click.Path(dir_okay=False, allow_dash=True),
        help="append the replay's JSON log events to this file ('-' for stderr)",
    ),
)

stats_options = _all(
    click.option(
        "--by",
        default="task,reason",
        show_default=True,
        help="group by these comma-separated dimensions: task, reason, exception, exception_path, hour, queue, "
        "hostname",
    ),
    format_option(),
)

purge_options = _all(click.option("--yes", is_flag=True, help="really delete"))
