"""Who may use the console and how: tokens and roles, the session, CSRF, Host/Origin checks, secure headers.

- Two roles: ``operator`` (may replay and purge) and ``readonly``. Their tokens come
  from ``CELERY_POLICY_WEB_TOKEN`` / ``CELERY_POLICY_WEB_READONLY_TOKEN`` or token
  files; there is no default token.
- With no token configured the console is read-only for everyone, and it only
  binds to a loopback address (:func:`check_bind`).
- An API client sends ``Authorization: Bearer <token>``; a browser logs in once
  with the token and gets a signed session cookie (``HttpOnly``, ``SameSite=Strict``).
- Every state-changing form of a session carries the session's CSRF token, and
  every request's ``Host`` must be one the console serves (DNS rebinding); a
  request with an ``Origin`` must come from that host.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Role = Literal["operator", "readonly"]
OPERATOR_VARIABLE = "CELERY_POLICY_WEB_TOKEN"
READONLY_VARIABLE = "CELERY_POLICY_WEB_READONLY_TOKEN"
MIN_TOKEN_LENGTH = 16

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURE_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" makes chromium send "Origin: null" on POST
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


class TokenError(ValueError):
    """A token that cannot be used (too short, unreadable file)."""


@dataclass(frozen=True)
class Tokens:
    operator: str | None = None
    readonly: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.operator or self.readonly)

    def role_of(self, presented: str | None) -> Role | None:
        """The role a presented token grants (compared in constant time), or None."""
        if not presented:
            return None
        given = presented.encode()
        if self.operator and hmac.compare_digest(given, self.operator.encode()):
            return "operator"
        if self.readonly and hmac.compare_digest(given, self.readonly.encode()):
            return "readonly"
        return None


def load_tokens(
    operator_file: str | None = None, readonly_file: str | None = None, environ: dict[str, str] | None = None
) -> Tokens:
    """Tokens from the files if given, else from the environment. Raises TokenError."""
    env = os.environ if environ is None else environ
    operator = _read(operator_file) if operator_file else (env.get(OPERATOR_VARIABLE) or None)
    readonly = _read(readonly_file) if readonly_file else (env.get(READONLY_VARIABLE) or None)
    for name, value in (("operator", operator), ("read-only", readonly)):
        if value is not None and len(value) < MIN_TOKEN_LENGTH:
            msg = f"the {name} token is shorter than {MIN_TOKEN_LENGTH} characters; use e.g. `openssl rand -hex 24`"
            raise TokenError(msg)
    if operator and readonly and operator == readonly:
        msg = "the operator and read-only tokens are the same"
        raise TokenError(msg)
    return Tokens(operator, readonly)


def _read(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        msg = f"cannot read token file {path}: {exc.strerror or exc}"
        raise TokenError(msg) from exc
    if not text:
        msg = f"token file {path} is empty"
        raise TokenError(msg)
    return text.splitlines()[0].strip()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: Tokens) -> str | None:
    """Why the console must not listen on ``host`` with these tokens, or None."""
    if is_loopback(host) or tokens.configured:
        return None
    return (
        f"refusing to listen on {host} without authentication: set {OPERATOR_VARIABLE} "
        f"(and {READONLY_VARIABLE}) or pass --token-file, or bind to 127.0.0.1"
    )


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(session: dict[str, Any], submitted: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and submitted) and hmac.compare_digest(str(expected).encode(), str(submitted).encode())


def bearer(headers: Headers) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass
class HostPolicy:
    """The ``Host`` values the console answers to: its bind address, loopback names when local, and extras."""

    bind_host: str
    port: int
    extra: tuple[str, ...] = ()
    _allowed: frozenset[str] = field(default=frozenset(), init=False)

    def __post_init__(self) -> None:
        names = {self.bind_host, *self.extra}
        if is_loopback(self.bind_host) or self.bind_host in ("0.0.0.0", "::"):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        self._allowed = frozenset(n.lower() for n in names)

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name, port = _split_host(host_header.lower())
        if port and self.port and port != str(self.port):
            return False
        return name in self._allowed


def _split_host(host: str) -> tuple[str, str]:
    if host.startswith("["):  # [::1]:8808
        end = host.find("]")
        return (host[: end + 1], host[end + 2 :]) if end != -1 else (host, "")
    name, _, port = host.partition(":")
    return name, port


class SecurityMiddleware:
    """Refuses foreign ``Host`` and cross-origin state changes; adds the secure headers to every answer."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = None
        if not self.hosts.allows(headers.get("host")):
            problem = b"unknown Host header"
        elif scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            # a browser sends Origin on every POST; it must name this very host (scheme://host[:port])
            if origin is not None and origin.split("://", 1)[-1].lower() != headers.get("host", "").lower():
                problem = b"cross-origin request refused"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURE_HEADERS]
            await send(message)

        if problem is not None:
            await send_with_headers(
                {"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]}
            )
            await send({"type": "http.response.body", "body": problem + b"\n"})
            return
        await self.app(scope, receive, send_with_headers)
