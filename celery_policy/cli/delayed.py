"""``celery-policy delayed list|stats``: the messages waiting in the Redis broker's delayed set.

Delayed delivery (``worker.delayed_delivery``) keeps countdown retries in
``celery-policy:delayed:<queue>`` sorted sets in the broker's Redis; these commands
read them (they change nothing). A broker that cannot be reached exits 3.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import click

from celery_policy import appinfo
from celery_policy.cli import options
from celery_policy.cli.exit import CONNECT, OK


def broker_client(url: str | None, app: str | None) -> Any:
    """A redis-py client for the broker named by ``--url`` or by ``--app``'s ``broker_url``."""
    import redis

    if not url and app:
        try:
            celery_app = appinfo.import_app(app)
        except appinfo.AppLoadError as exc:
            raise click.UsageError(str(exc)) from exc
        url = celery_app.conf.broker_url
    if not url:
        raise click.UsageError("pass --url redis://... or --app with a Redis broker")
    if str(url).split("://", 1)[0].lower() not in ("redis", "rediss"):
        raise click.UsageError(f"the delayed set lives in a Redis broker, not {str(url).split('://', 1)[0]}://")
    return redis.Redis.from_url(str(url), socket_timeout=10, socket_connect_timeout=5)


def delayed_counts(url: str | None) -> dict[str, int] | None:
    """Delayed messages per queue in the Redis broker at ``url``; None when it is not Redis or does not answer."""
    if not url or str(url).split("://", 1)[0].lower() not in ("redis", "rediss"):
        return None
    import redis

    from celery_policy.transport import delayed

    try:
        client = redis.Redis.from_url(str(url), socket_timeout=5, socket_connect_timeout=3)
        return delayed.counts(client)
    except redis.RedisError:
        return None


def delayed_overview(url: str | None) -> tuple[dict[str, int], dict[str, int]] | None:
    """Per queue, the delayed messages and those of them nothing has moved (see ``delayed.stuck``); None when the
    broker is not Redis or does not answer."""
    if not url or str(url).split("://", 1)[0].lower() not in ("redis", "rediss"):
        return None
    import redis

    from celery_policy.transport import delayed

    try:
        client = redis.Redis.from_url(str(url), socket_timeout=5, socket_connect_timeout=3)
        return delayed.counts(client), delayed.stuck(client)
    except redis.RedisError:
        return None


def stuck_lines(stuck: dict[str, int]) -> list[str]:
    """The warning under the delayed counts when due messages wait with nothing to move them."""
    from celery_policy.transport.delayed import STUCK_AFTER_S

    if not stuck:
        return []
    per_queue = ", ".join(f"{queue} {count}" for queue, count in stuck.items())
    return [
        f"warning: more than {STUCK_AFTER_S:.0f} s past due and not moved: {per_queue}",
        "  help: only a running celery-policy worker with delayed delivery moves due messages (those of every queue"
        " of its Redis database, consumed or not); plain Celery workers and producers do not",
    ]


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


_broker_options = options._all(
    click.option("--url", help="the Redis broker URL (default: --app's broker_url)"),
    click.option("--app", "app", help="Celery app module whose broker to read"),
)


@click.group()
def delayed() -> None:
    """Inspect the messages delayed delivery keeps in the Redis broker (countdown retries)."""


@delayed.command("stats")
@_broker_options
@options.format_option()
def stats_command(url: str | None, app: str | None, fmt: str) -> int:
    """Per queue: how many messages wait, how many are overdue, the next and last due time."""
    import redis

    from celery_policy.transport import delayed as store

    client = broker_client(url, app)
    try:
        found = store.stats(client)
    except redis.RedisError as exc:
        click.echo(f"celery-policy delayed: error: cannot reach the broker: {exc}", err=True)
        return CONNECT
    if fmt == "json":
        click.echo(json.dumps(found, indent=2))
        return OK
    if not found:
        click.echo("no delayed messages")
        return OK
    stuck = store.stuck(client)
    width = max(len("queue"), *(len(name) for name in found))
    click.echo(f"{'queue':<{width}}  {'delayed':>8}  {'overdue':>8}  next due                   last due")
    for name, row in found.items():
        click.echo(
            f"{name:<{width}}  {row['delayed']:>8}  {row['overdue']:>8}  "
            f"{_when(row['next_due']):<25}  {_when(row['last_due'])}"
        )
    for line in stuck_lines(stuck):
        click.echo(line)
    return OK


@delayed.command("list")
@_broker_options
@click.option("--queue", help="only this queue")
@click.option("--limit", type=int, default=50, show_default=True)
@options.format_option()
def list_command(url: str | None, app: str | None, queue: str | None, limit: int, fmt: str) -> int:
    """The next delayed messages by due time: queue, due, task, id, retries."""
    import redis

    from celery_policy.transport import delayed as store

    client = broker_client(url, app)
    try:
        found = store.entries(client, queue, limit)
    except redis.RedisError as exc:
        click.echo(f"celery-policy delayed: error: cannot reach the broker: {exc}", err=True)
        return CONNECT
    if fmt == "json":
        rows = [{"queue": e.queue, "due": e.due, "task": e.task, "id": e.task_id, "retries": e.retries} for e in found]
        click.echo(json.dumps(rows, indent=2))
        return OK
    if not found:
        click.echo("no delayed messages")
        return OK
    now = time.time()
    for entry in found:
        click.echo(
            f"{_when(entry.due)}  (in {max(0.0, entry.due - now):.0f}s)  {entry.queue}  {entry.task}  "
            f"{entry.task_id}  retries={entry.retries}"
        )
    return OK
