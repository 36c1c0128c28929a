"""``celery-policy breakers``: the fleet's circuit breakers, and the operator's kill switch.

``breakers`` lists every breaker of the policy with its shared state, failure
rate and the time of its last change; ``breakers open NAME`` forces one open (it
stays open, snoozing every task that uses it, until ``breakers close NAME``).
Each forced change is logged as a structured event on stderr and appended to an
audit list in Redis (``<flow_store.prefix>:audit``) with who and why.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
import redis

from celery_policy import appinfo
from celery_policy.cli import options
from celery_policy.cli.exit import CONNECT, FAILED, OK, USAGE
from celery_policy.errors import PolicyError
from celery_policy.flow.state import Breaker, BreakerState
from celery_policy.redis_urls import RedisUrlError, client_from_url, safe_url
from celery_policy.resolve import Policy, load

AUDIT_LENGTH = 1000  # forced changes kept in the audit list


class _Usage(Exception):
    pass


def _policy_and_url(files: Sequence[str], app: str | None, url: str | None, env: str | None) -> tuple[Policy, str]:
    celery_app = None
    if app:
        try:
            celery_app = appinfo.import_app(app)
        except appinfo.AppLoadError as exc:
            raise _Usage(str(exc)) from exc
    policy: Policy | None = None
    if files or celery_app is None:
        try:
            policy = load(list(files) or None, env=env, check_imports=False)
        except PolicyError as exc:
            raise _Usage(str(exc)) from exc
    else:
        from celery_policy.runtime.install import runtime_for

        runtime = runtime_for(celery_app)
        if runtime is None:
            msg = f"app '{app}' does not install a policy; pass --file"
            raise _Usage(msg)
        policy = runtime.policy
    broker = None
    if celery_app is not None:
        broker = celery_app.conf.broker_url
    from celery_policy.runtime.flow import flow_store_url

    found = url or flow_store_url(policy, broker)
    if not found:
        msg = "no Redis for breaker state: pass --url, --app with a Redis broker, or set flow_store.url"
        raise _Usage(msg)
    return policy, found


def breaker_states(policy: Policy, url: str) -> list[BreakerState]:
    """The shared state of every breaker the policy defines (raises redis errors)."""
    client = client_from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
    settings = policy.document.flow_store
    return [
        Breaker(name, breaker, client, settings.prefix, 0.0).read()
        for name, breaker in sorted(policy.document.breakers.items())
    ]


def render_states(states: Sequence[BreakerState], now: float | None = None) -> list[str]:
    """One line per breaker: name, state, failure rate, since when."""
    if not states:
        return ["no breakers defined"]
    now = time.time() if now is None else now
    width = max(len(s.name) for s in states)
    lines = []
    for state in states:
        rate = "-" if state.failure_rate is None else f"{state.failure_rate:.0%}"
        calls = f" of {state.calls} calls" if state.state == "closed" and state.calls else ""
        if state.since > 0:
            at = dt.datetime.fromtimestamp(state.since, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            since = f"since {at} ({_ago(now - state.since)} ago)"
        else:
            since = "never changed"
        extra = ""
        if state.forced:
            extra = "  forced open (breakers close to end it)"
        elif state.state == "open":
            extra = f"  half-open in {state.open_remaining_s:.1f}s"
        label = state.state.replace("_", "-")
        lines.append(f"{state.name:<{width}}  {label:<9}  failure rate {rate}{calls}  {since}{extra}")
    return lines


def states_json(states: Sequence[BreakerState]) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "state": s.state,
            "since": s.since,
            "failure_rate": s.failure_rate,
            "calls": s.calls,
            "failures": s.failures,
            "forced": s.forced,
            "open_remaining_s": s.open_remaining_s,
        }
        for s in states
    ]


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _error(text: str) -> None:
    click.echo(f"celery-policy breakers: error: {text}", err=True)


def _source_options(func: Any) -> Any:
    func = click.option("--url", help="Redis URL of the breaker state (default: from the policy and --app)")(func)
    func = click.option("--app", "app", help="Celery app module (its policy and broker), e.g. proj.celery")(func)
    func = options.env_option("environment of the policy")(func)
    return options.policy_file_option("policy file (repeatable; default: $CELERY_POLICY_FILE)")(func)


@click.group(invoke_without_command=True)
@_source_options
@options.format_option()
@click.pass_context
def breakers(
    ctx: click.Context, files: tuple[str, ...], env: str | None, app: str | None, url: str | None, fmt: str
) -> int:
    """Show each circuit breaker's shared state, failure rate and since when; open|close NAME force one."""
    ctx.ensure_object(dict)
    ctx.obj.update(files=files, env=env, app=app, url=url)
    if ctx.invoked_subcommand is not None:
        return OK
    try:
        policy, found = _policy_and_url(files, app, url, env)
        states = breaker_states(policy, found)
    except _Usage as exc:
        _error(str(exc))
        return USAGE
    except (RedisUrlError, redis.RedisError, OSError) as exc:
        _error(f"cannot read breaker state from {safe_url(url or '') or 'Redis'}: {exc}")
        return CONNECT
    if fmt == "json":
        click.echo(json.dumps({"breakers": states_json(states)}, indent=2))
    else:
        click.echo("\n".join(render_states(states)))
    return OK


def _force(ctx: click.Context, name: str, state: str, reason: str | None) -> int:
    obj = ctx.obj or {}
    try:
        policy, url = _policy_and_url(obj.get("files", ()), obj.get("app"), obj.get("url"), obj.get("env"))
    except _Usage as exc:
        _error(str(exc))
        return USAGE
    settings = policy.document.breakers.get(name)
    if settings is None:
        known = ", ".join(sorted(policy.document.breakers)) or "none"
        _error(f"unknown breaker '{name}' (known: {known})")
        return FAILED
    operator = f"{getpass.getuser()}@{socket.gethostname()}"
    prefix = policy.document.flow_store.prefix
    try:
        client = client_from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
        breaker = Breaker(name, settings, client, prefix, 0.0)
        before = breaker.read()
        after = breaker.force(state)
        entry = {"t": time.time(), "breaker": name, "state": state, "was": before.state, "by": operator}
        if reason:
            entry["reason"] = reason
        pipe = client.pipeline()
        pipe.lpush(f"{prefix}:audit", json.dumps(entry))
        pipe.ltrim(f"{prefix}:audit", 0, AUDIT_LENGTH - 1)
        pipe.execute()
    except (RedisUrlError, redis.RedisError, OSError) as exc:
        _error(f"cannot reach {safe_url(url)}: {exc}")
        return CONNECT
    _log_forced(name, state, before.state, operator, reason)
    verb = "forced open: tasks using it are snoozed until 'breakers close'" if state == "open" else "closed"
    click.echo(f"breaker {name} {verb} (was {before.state.replace('_', '-')}; by {operator})")
    click.echo("\n".join(render_states([after])))
    return OK


def _log_forced(name: str, state: str, was: str, operator: str, reason: str | None) -> None:
    """One JSON event on stderr; a logger of its own, so the process's structlog set-up is left alone."""
    import structlog

    log = structlog.wrap_logger(
        structlog.PrintLogger(file=sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    log.warning("breaker_forced", breaker=name, state=state, was=was, by=operator, reason=reason)


@breakers.command("open")
@click.argument("name")
@click.option("--reason", help="why (kept in the audit list and the log)")
@click.pass_context
def open_command(ctx: click.Context, name: str, reason: str | None) -> int:
    """Force breaker NAME open (a kill switch for its downstream): it stays open until closed."""
    return _force(ctx, name, "open", reason)


@breakers.command("close")
@click.argument("name")
@click.option("--reason", help="why (kept in the audit list and the log)")
@click.pass_context
def close_command(ctx: click.Context, name: str, reason: str | None) -> int:
    """Close breaker NAME (ends a forced open, or an open state now)."""
    return _force(ctx, name, "closed", reason)
