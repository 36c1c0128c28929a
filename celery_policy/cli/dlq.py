"""The ``celery-policy dlq`` commands: locate the store, list, show, count, replay, purge.

Every command handles a store that cannot be reached the same way: a message
on stderr and exit 3 (:data:`~celery_policy.cli.exit.CONNECT`), never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from dataclasses import dataclass
from typing import Any

import click

from celery_policy import appinfo
from celery_policy.cli import options
from celery_policy.cli.exit import CONNECT, FAILED, OK, USAGE
from celery_policy.deadletter.amqp import AmqpDeadLetterStore, confirmed_publisher
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.replay import celery_publisher, purge, replay
from celery_policy.deadletter.store import Filter, RedisStreamStore, StoreUnavailableError, store_url_for
from celery_policy.durations import DurationError, parse_duration
from celery_policy.errors import PolicyError


def _load_app(module: str) -> Any:
    try:
        return appinfo.import_app(module)
    except appinfo.AppLoadError as exc:  # a usage error (exit 2), as for an unreadable --file
        raise click.UsageError(str(exc)) from exc


def _open_store(
    url: str | None, files: tuple[str, ...], app: str | None, stream: str | None
) -> RedisStreamStore | AmqpDeadLetterStore:
    settings = None
    policy = None
    if files or not url:
        from celery_policy.cli.project import ProjectConfigError, find_project_config
        from celery_policy.resolve import load

        try:
            config = find_project_config()
        except ProjectConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        if not files and config is not None and config.files:
            files = config.files  # [tool.celery-policy] names the policy, as for check and explain
        try:
            policy = load(list(files) or None, check_imports=False)
            settings = policy.document.dead_letter_store
        except PolicyError as exc:
            if files:  # an unreadable or invalid --file is a usage error (exit 2), not a traceback
                raise click.UsageError(str(exc)) from exc
    broker = None
    celery_app = None
    if app:
        celery_app = _load_app(app)
        broker = celery_app.conf.broker_url
    # RabbitMQ: an amqp:// --url, or dead_letter_store resolving to the broker's '<queue>.dead' queues
    from celery_policy.runtime.amqp import cli_store

    try:
        amqp_store: AmqpDeadLetterStore | None = cli_store(url, policy, broker, celery_app)
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from exc
    if amqp_store is not None:
        return amqp_store
    found = store_url_for(url or (settings.url if settings else None), broker)
    if found is None:
        msg = "no dead-letter store: pass --url, --app with a Redis broker, or set dead_letter_store.url"
        raise click.UsageError(msg)
    return RedisStreamStore(
        found,
        stream or (settings.stream if settings else "celery-policy:dead"),
        settings.max_length if settings else 100_000,
    )


def _filter(task: str | None, reason: str | None, since: str | None, ids: tuple[str, ...]) -> Filter:
    try:
        since_s = parse_duration(since) if since else None
    except DurationError as exc:
        raise click.UsageError(f"--since: {exc}") from exc
    return Filter(task=task, reason=reason, since_s=since_s, ids=tuple(ids))


@dataclass(frozen=True)
class Where:
    """Which store and which records a dlq command works on (the options every dlq command shares)."""

    url: str | None = None
    files: tuple[str, ...] = ()
    app: str | None = None
    stream: str | None = None
    task: str | None = None
    reason: str | None = None
    since: str | None = None
    ids: tuple[str, ...] = ()

    def store(self) -> RedisStreamStore | AmqpDeadLetterStore:
        return _open_store(self.url, self.files, self.app, self.stream)

    def filter(self) -> Filter:
        return _filter(self.task, self.reason, self.since, self.ids)


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _line(record: DeadLetter) -> str:
    message = record.exc_message.replace("\n", " ")
    if len(message) > 60:
        message = message[:59] + "…"
    return (
        f"{record.id}  {_when(record.last_failure)}  {record.task}  {record.reason}  "
        f"{record.exc_type.rsplit('.', 1)[-1]}: {message}  attempts={record.attempts}"
        + ("" if record.replayable else "  (redacted: not replayable)")
    )


def run_list(limit: int, fmt: str, **where: Any) -> int:
    selection = Where(**where)
    store = selection.store()
    try:
        records = list(store.iter(selection.filter(), limit=limit))
        total = store.count()
    except StoreUnavailableError as exc:
        click.echo(f"error: {exc}", err=True)
        return CONNECT
    if fmt == "json":
        click.echo(json.dumps({"version": 1, "total": total, "records": [r.model_dump() for r in records]}, indent=2))
        return OK
    for record in records:
        click.echo(_line(record))
    click.echo(f"{len(records)} shown, {total} in {store.describe()}")
    return OK


def run_show(entry_id: str, url: str | None, files: tuple[str, ...], app: str | None, stream: str | None) -> int:
    store = _open_store(url, files, app, stream)
    try:
        found = list(store.iter(Filter(ids=(entry_id,))))
    except StoreUnavailableError as exc:
        click.echo(f"error: {exc}", err=True)
        return CONNECT
    if not found:
        click.echo(f"error: no dead letter {entry_id} in {store.describe()}", err=True)
        return FAILED
    record = found[0]
    for key, value in record.model_dump().items():
        if key == "traceback":
            continue
        shown = _when(value) + " UTC" if key in {"first_failure", "last_failure"} else value
        click.echo(f"{key:>14}: {shown}")
    click.echo("     traceback:")
    click.echo(record.traceback.rstrip())
    return OK


def run_replay(
    dry_run: bool,
    broker: str | None,
    batch: int = 1,
    yes: bool = False,
    queue: str | None = None,
    allow_redacted: bool = False,
    **where: Any,
) -> int:
    selection = Where(**where)
    store = selection.store()
    flt = selection.filter()
    app = selection.app
    if not (yes or dry_run):
        # Replaying runs the work again (a charge, an e-mail): like purge, it needs a yes.
        if not sys.stdin.isatty():
            click.echo(
                "error: replay runs the tasks again; pass --yes to confirm (or --dry-run to look first)", err=True
            )
            return USAGE
        try:
            matching = _matching(store, flt)
        except StoreUnavailableError as exc:
            click.echo(f"error: {exc}", err=True)
            return CONNECT
        if not click.confirm(f"replay {matching} dead letters from {store.describe()}?"):
            return USAGE
    if app:
        celery_app = _load_app(app)
    else:
        from celery import Celery

        celery_app = Celery("celery-policy-replay", broker=broker or store.url)
    try:
        if isinstance(store, AmqpDeadLetterStore):  # RabbitMQ: consume unacked, publish with confirm, then ack
            publisher = confirmed_publisher(celery_app, queue)
            report = store.replay(flt, publisher, dry_run=dry_run, allow_redacted=allow_redacted)
        else:
            records = list(store.iter(flt))
            publish = celery_publisher(celery_app, queue)
            with _progress(records) as shown:
                report = replay(
                    store, shown, publish, dry_run=dry_run, batch=max(1, batch), allow_redacted=allow_redacted
                )
    except StoreUnavailableError as exc:
        click.echo(f"error: {exc}", err=True)
        return CONNECT
    verb = "would replay" if dry_run else "replayed"
    for entry, new_id in report.replayed:
        click.echo(f"{verb} {entry} as task {new_id}")
    for entry, why in report.skipped:
        click.echo(f"skipped {entry}: {why}")
    for entry, why in report.failed:
        click.echo(f"failed {entry}: {why}", err=True)
    if report.stopped:
        click.echo(f"stopped: {report.stopped}", err=True)
    click.echo(f"{len(report.replayed)} {verb}, {len(report.skipped)} skipped, {len(report.failed)} failed")
    return CONNECT if report.failed else OK


def _matching(store: RedisStreamStore | AmqpDeadLetterStore, flt: Filter) -> int:
    """How many records ``flt`` selects (for the confirmation question). Raises StoreUnavailableError."""
    return sum(1 for _ in store.iter(flt))


def _progress(records: list[DeadLetter]) -> Any:
    """A progress bar on stderr for longer replays at a terminal; a plain pass-through otherwise."""
    if len(records) > 20 and sys.stderr.isatty():
        return click.progressbar(records, label="replaying", file=sys.stderr)
    return contextlib.nullcontext(records)


def run_stats(fmt: str, **where: Any) -> int:
    """Counts of dead letters by task and reason."""
    selection = Where(**where)
    store = selection.store()
    counts: dict[tuple[str, str], int] = {}
    try:
        for record in store.iter(selection.filter()):
            key = (record.task, record.reason)
            counts[key] = counts.get(key, 0) + 1
    except StoreUnavailableError as exc:
        click.echo(f"error: {exc}", err=True)
        return CONNECT
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    total = sum(counts.values())
    if fmt == "json":
        data = {"version": 1, "total": total, "counts": [{"task": t, "reason": r, "count": n} for (t, r), n in rows]}
        click.echo(json.dumps(data, indent=2))
        return OK
    width = max([len("task"), *(len(t) for (t, _), _ in rows)])
    click.echo(f"{'task':<{width}}  {'reason':<18}  count")
    for (name, why), count in rows:
        click.echo(f"{name:<{width}}  {why:<18}  {count:>5}")
    click.echo(f"{total} dead letters in {store.describe()}")
    return OK


def run_purge(yes: bool, **where: Any) -> int:
    selection = Where(**where)
    store = selection.store()
    flt = selection.filter()
    if not yes and not sys.stdin.isatty():
        click.echo("error: purge deletes dead letters; pass --yes to confirm", err=True)
        return USAGE
    try:
        # The count for the question reads the store too: it fails like the purge itself.
        if not yes and not click.confirm(f"delete {_matching(store, flt)} dead letters from {store.describe()}?"):
            return USAGE
        deleted = purge(store, flt)
    except StoreUnavailableError as exc:
        click.echo(f"error: {exc}", err=True)
        return CONNECT
    click.echo(f"deleted {deleted} dead letters from {store.describe()}")
    return OK


# --- the commands -------------------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """List, show, replay and purge dead letters."""


@dlq.command("list")
@options.store_options
@options.filter_options
@options.list_options
def dlq_list(**opts: Any) -> int:
    """List dead letters, oldest first."""
    return run_list(**opts)


@dlq.command("show")
@click.argument("entry_id")
@options.store_options
def dlq_show(entry_id: str, **opts: Any) -> int:
    """Show one dead letter with its traceback."""
    return run_show(entry_id, **opts)


@dlq.command("replay")
@options.store_options
@options.filter_options
@options.replay_options
@click.option("--broker", help="broker URL to publish to (default: the app's broker, else the store's Redis)")
def dlq_replay(**opts: Any) -> int:
    """Re-publish matching dead letters with new task ids; each is deleted only after the broker took it."""
    return run_replay(**opts)


@dlq.command("stats")
@options.store_options
@options.filter_options
@options.format_option()
def dlq_stats(**opts: Any) -> int:
    """Count dead letters by task and reason."""
    return run_stats(**opts)


@dlq.command("purge")
@options.store_options
@options.filter_options
@options.purge_options
def dlq_purge(**opts: Any) -> int:
    """Delete matching dead letters (needs --yes)."""
    return run_purge(**opts)
