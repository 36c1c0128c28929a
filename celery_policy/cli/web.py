"""``celery-policy web``: serve the console (:mod:`celery_policy.web`) with uvicorn.

``celery-policy web [--app MODULE | --url STORE_URL] [--file POLICY] [--bind HOST:PORT]``,
default ``127.0.0.1:8808``. Tokens: ``CELERY_POLICY_WEB_TOKEN`` (operator) and
``CELERY_POLICY_WEB_READONLY_TOKEN`` (read-only), or ``--token-file`` /
``--readonly-token-file``. A non-loopback ``--bind`` without a token is refused.
"""

from __future__ import annotations

from typing import Any

import click

DEFAULT_BIND = "127.0.0.1:8808"


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8808`` for IPv6) -> (host, port); click.UsageError when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"--bind: expected HOST:PORT, e.g. {DEFAULT_BIND}, got {value!r}"
        raise click.UsageError(msg)
    return host.strip("[]"), int(port)


def build_config(
    *,
    url: str | None,
    files: tuple[str, ...],
    app: str | None,
    stream: str | None,
    bind: str,
    token_file: str | None,
    readonly_token_file: str | None,
    allowed_hosts: tuple[str, ...] = (),
    secure_cookie: bool = False,
    celery_app: Any = None,
) -> Any:
    """The console's :class:`~celery_policy.web.app.WebConfig`; click.UsageError for what cannot work."""
    try:
        from celery_policy.web.app import WebConfig
        from celery_policy.web.security import TokenError, check_bind, load_tokens
    except ImportError as exc:
        from celery_policy.web import INSTALL_HINT

        raise click.UsageError(f"{INSTALL_HINT} ({exc})") from exc
    from celery_policy.cli.dlq import _load_app, _open_store
    from celery_policy.deadletter.store import RedisStreamStore
    from celery_policy.errors import PolicyError
    from celery_policy.resolve import load

    host, port = parse_bind(bind)
    try:
        tokens = load_tokens(token_file, readonly_token_file)
    except TokenError as exc:
        raise click.UsageError(str(exc)) from exc
    refused = check_bind(host, tokens)
    if refused:
        raise click.UsageError(refused)
    if celery_app is None and app:
        celery_app = _load_app(app)
    policy_files = list(files)
    env = None
    if not policy_files and celery_app is not None:
        policy_files, env = _policy_of(celery_app)
    policy = None
    try:
        policy = load(policy_files or None, env=env, check_imports=False)
    except PolicyError as exc:
        if policy_files:
            raise click.UsageError(str(exc)) from exc  # a --file that cannot be read is a usage error
    store = _open_store(url, tuple(policy_files), None, stream) if celery_app is None else None
    if store is None:
        from celery_policy.deadletter.store import store_url_for

        settings = policy.document.dead_letter_store if policy is not None else None
        found = store_url_for(url or (settings.url if settings else None), celery_app.conf.broker_url)
        if found is None:
            msg = "no dead-letter store: pass --url, --app with a Redis broker, or set dead_letter_store.url"
            raise click.UsageError(msg)
        store = RedisStreamStore(found, stream or (settings.stream if settings else "celery-policy:dead"))
    if not isinstance(store, RedisStreamStore):
        msg = "the web console reads Redis stream stores; pass --url redis://… (RabbitMQ '.dead' queues: use dlq)"
        raise click.UsageError(msg)
    return WebConfig(
        store=store,
        tokens=tokens,
        host=host,
        port=port,
        policy=policy,
        app=celery_app,
        broker_url=url,
        allowed_hosts=allowed_hosts,
        secure_cookies=secure_cookie,
    )


def _policy_of(app: Any) -> tuple[list[str], str | None]:
    """The policy files and environment ``app`` installed (else its CELERY_POLICY_FILE / _ENV settings)."""
    import os

    from celery_policy import appinfo
    from celery_policy.runtime.install import runtime_for

    runtime = runtime_for(app)
    if runtime is not None:
        return list(runtime.policy.files), runtime.policy.env
    configured = appinfo.setting(app, "CELERY_POLICY_FILE")
    return [p for p in (configured or "").split(os.pathsep) if p], appinfo.setting(app, "CELERY_POLICY_ENV")


def serve(config: Any) -> int:
    import uvicorn

    from celery_policy.web.app import build_app

    shown = f"[{config.host}]" if ":" in config.host else config.host
    click.echo(f"celery-policy web: http://{shown}:{config.port}/dead-letters ({config.store.describe()})", err=True)
    uvicorn.run(build_app(config), host=config.host, port=config.port, log_level="warning", proxy_headers=False)
    return 0


def web_options(func: Any) -> Any:
    for decorator in reversed(
        [
            click.option(
                "--url", help="Redis URL of the dead-letter store (default: the policy's, else the app's broker)"
            ),
            click.option(
                "--file", "files", multiple=True, type=click.Path(dir_okay=False), help="policy file (repeatable)"
            ),
            click.option("--stream", help="stream name (default: from the policy, else celery-policy:dead)"),
            click.option("--bind", default=DEFAULT_BIND, show_default=True, help="HOST:PORT to listen on"),
            click.option("--token-file", type=click.Path(dir_okay=False), help="file holding the operator token"),
            click.option(
                "--readonly-token-file", type=click.Path(dir_okay=False), help="file holding the read-only token"
            ),
            click.option(
                "--allowed-host", "allowed_hosts", multiple=True, help="another Host name the console answers to"
            ),
            click.option(
                "--secure-cookie", is_flag=True, help="send the session cookie over HTTPS only (behind a TLS proxy)"
            ),
        ]
    ):
        func = decorator(func)
    return func


@click.command()
@click.option("--app", "app", help="Celery app module: replay target, fleet, task list and (by default) store")
@web_options
def web(**opts: Any) -> int:
    """Serve the web console: dead letters (grouped, replay, purge), policies, fleet, /metrics."""
    return serve(build_config(**opts))
