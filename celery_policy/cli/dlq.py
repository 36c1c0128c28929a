"""The ``celery-policy dlq`` commands: locate the store, list, show, count, replay, purge.

Every command handles a store that cannot be reached the same way: a message
on stderr and exit 3 (:data:`~celery_policy.cli.exit.CONNECT`), never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click

from celery_policy import appinfo
from celery_policy.cli import options
from celery_policy.cli.exit import CONNECT, FAILED, OK, USAGE
from celery_policy.deadletter.amqp import AmqpDeadLetterStore, confirmed_publisher
from celery_policy.deadletter.canvas import CANVAS_FIELDS
from celery_policy.deadletter.record import DeadLetter
from celery_policy.deadletter.replay import (
    FRESH_BUDGET_NOTE,
    ReplayReport,
    celery_publisher,
    parse_rate,
    purge,
    replay_dead_letters,
)
from celery_policy.deadletter.stats import group_counts, parse_dimensions, stats_json, stats_table
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
    data = record.model_dump()
    for key, value in data.items():
        if key == "traceback" or key in CANVAS_FIELDS:
            continue
        shown = _when(value) + " UTC" if key in {"first_failure", "last_failure"} else value
        click.echo(f"{key:>14}: {shown}")
    for key in CANVAS_FIELDS:  # where the task was in its canvas: only what is set (older records have none)
        if data[key] not in (None, "", [], {}):
            click.echo(f"{key:>14}: {_canvas_value(data[key])}")
    click.echo("     traceback:")
    click.echo(record.traceback.rstrip())
    return OK


def _canvas_value(value: Any) -> str:
    """Signatures by task name (``chain`` next task first, as it will run), other values as they are."""
    if isinstance(value, list) and all(isinstance(item, dict) and "task" in item for item in value):
        return " -> ".join(str(item["task"]) for item in reversed(value)) if value else ""
    if isinstance(value, dict) and "task" in value:
        return str(value["task"])
    return str(value)


def run_replay(
    dry_run: bool,
    broker: str | None,
    batch: int = 1,
    yes: bool = False,
    queue: str | None = None,
    allow_redacted: bool = False,
    rate: str | None = None,
    spread: str | None = None,
    max_records: int | None = None,
    name: str | None = None,
    without_chord: bool = False,
    events: str | None = None,
    pipeline: bool = True,
    **where: Any,
) -> int:
    selection = Where(**where)
    store = selection.store()
    flt = selection.filter()
    app = selection.app
    try:
        parse_rate(rate)
        if spread:
            parse_duration(spread)
    except (ValueError, DurationError) as exc:
        raise click.UsageError(f"--rate/--spread: {exc}") from exc
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
    if isinstance(store, AmqpDeadLetterStore):  # RabbitMQ: consume unacked, publish with confirm, then ack
        publisher: Any = confirmed_publisher(celery_app, queue)
    elif pipeline:  # a Redis broker: pre-serialized messages, one pipeline per batch (deadletter/fastpath.py)
        from celery_policy.deadletter.fastpath import pipeline_publisher_for

        publisher = pipeline_publisher_for(celery_app, queue)
    else:
        publisher = celery_publisher(celery_app, queue)
    pacing = f"rate {rate}" if rate else "rate unlimited"
    if spread:
        pacing += f", ETAs spread over {spread}"
    progress = _Progress(sys.stderr.isatty())
    if progress.enabled and not dry_run:
        click.echo(f"replaying at {pacing}; {FRESH_BUDGET_NOTE}", err=True)
    stop = threading.Event()
    try:
        with _events_log(events) as log, _stop_on_signals(stop):
            report = replay_dead_letters(
                store, publisher, flt, rate=rate, spread=spread, max_records=max_records, dry_run=dry_run,
                name=name, allow_redacted=allow_redacted, without_chord=without_chord, batch=max(1, batch),
                stop=stop, on_progress=progress, log=log,
            )  # fmt: skip
    except StoreUnavailableError as exc:
        click.echo(f"error: {exc}", err=True)
        return CONNECT
    progress.finish()
    _print_report(report, pacing)
    return CONNECT if report.failed else OK


def _print_report(report: ReplayReport, pacing: str) -> None:
    verb = "would replay" if report.dry_run else "replayed"
    for entry, new_id in report.replayed:
        click.echo(f"{verb} {entry} as task {new_id}")
    for entry, why in report.skipped:
        click.echo(f"skipped {entry}: {why}")
    for entry, why in report.failed:
        click.echo(f"failed {entry}: {why}", err=True)
    if report.stopped:
        click.echo(f"stopped: {report.stopped}", err=True)
    if report.dry_run and report.replayed:
        click.echo(f"by task: {_breakdown(report.by_task)}")
        click.echo(f"by reason: {_breakdown(report.by_reason)}")
    if report.replayed:
        rate = parse_rate(pacing.removeprefix("rate ").split(",")[0]) if "unlimited" not in pacing else None
        took = f" (about {_duration(len(report.replayed) / rate)})" if rate and report.dry_run else ""
        verb_pace = "would publish" if report.dry_run else "published"
        click.echo(f"{verb_pace} at {pacing}{took}; {FRESH_BUDGET_NOTE}")
    label = f" (incident {report.name})" if report.name else ""
    click.echo(f"{len(report.replayed)} {verb}, {len(report.skipped)} skipped, {len(report.failed)} failed{label}")


def _breakdown(counts: Any) -> str:
    return ", ".join(f"{key} {count:,}" for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"


class _Progress:
    """One line on stderr at a terminal: done/planned, the publish rate and the time left."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = False
        self.last = 0.0

    def __call__(self, report: ReplayReport) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        elapsed = now - report.started
        rate = len(report.replayed) / elapsed if elapsed > 0 else 0.0
        planned = report.planned
        left = f", ETA {_duration((planned - report.done) / rate)}" if planned and rate > 0 else ""
        total = f"/{planned:,}" if planned else ""
        sys.stderr.write(f"\rreplaying {report.done:,}{total}  {rate:,.0f}/s{left}   ")
        sys.stderr.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the replay after the records in flight (confirmed, then removed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _events_log(path: str | None) -> Iterator[Any]:
    """A structlog logger writing JSON lines to ``path`` ('-': stderr); without a path, one that drops events."""
    import structlog

    if not path:
        yield structlog.wrap_logger(None, processors=[_drop])
        return
    stream: Any = sys.stderr if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
    try:
        yield structlog.wrap_logger(
            structlog.PrintLogger(stream),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(),
            ],
        )
    finally:
        if stream is not sys.stderr:
            stream.close()


def _drop(logger: Any, method: str, event: Any) -> Any:
    import structlog

    raise structlog.DropEvent


def _matching(store: RedisStreamStore | AmqpDeadLetterStore, flt: Filter) -> int:
    """How many records ``flt`` selects (for the confirmation question). Raises StoreUnavailableError."""
    return sum(1 for _ in store.iter(flt))


def run_stats(fmt: str, by: str = "task,reason", **where: Any) -> int:
    """Counts of dead letters grouped by ``by`` (see :mod:`celery_policy.deadletter.stats`)."""
    try:
        dimensions = parse_dimensions(by)
    except ValueError as exc:
        raise click.UsageError(f"--by: {exc}") from exc
    selection = Where(**where)
    store = selection.store()
    try:
        rows = group_counts(store.iter(selection.filter()), dimensions)
    except StoreUnavailableError as exc:
        click.echo(f"error: {exc}", err=True)
        return CONNECT
    if fmt == "json":
        click.echo(json.dumps(stats_json(rows, dimensions), indent=2))
        return OK
    for line in stats_table(rows, dimensions):
        click.echo(line)
    click.echo(f"{sum(row.count for row in rows):,} dead letters in {store.describe()}")
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
@options.stats_options
def dlq_stats(**opts: Any) -> int:
    """Count dead letters by task and reason (or --by task,reason,exception,hour)."""
    return run_stats(**opts)


@dlq.command("purge")
@options.store_options
@options.filter_options
@options.purge_options
def dlq_purge(**opts: Any) -> int:
    """Delete matching dead letters (needs --yes)."""
    return run_purge(**opts)
