"""One place that turns a store URL into a redis-py client.

Supported URLs (``dead_letter_store.url``, ``dlq --url``):

``redis://[[user]:password@]host[:port][/db]``, ``rediss://…``, ``unix:///path/redis.sock?db=N``
    a single server, as ``redis.Redis.from_url`` reads them.

``redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db][?sentinel_password=…]``
    a Sentinel set: the listed sentinels are asked for the current master of
    ``service_name``; the client follows a failover. The password (and user)
    in the URL are the Redis master's; sentinels that need their own password
    take ``sentinel_password``. ``db`` defaults to 0. ``rediss+sentinel://``
    uses TLS to the master.

``redis+cluster://[[user]:password@]host:port[,host:port…]``
    a Redis Cluster: the listed nodes are startup nodes, the client discovers
    the rest. A cluster has only database 0, so a path other than ``/`` or
    ``/0`` is an error. ``rediss+cluster://`` uses TLS.

Everything celery-policy stores in Redis is safe on a cluster: the
dead-letter stream is one key, the redelivery counter pipeline touches one
key, and the two idempotency keys of a business key share a ``{…}`` hash tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

RedisClient: TypeAlias = "redis.Redis | RedisCluster"

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = (*SINGLE_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)


class RedisUrlError(ValueError):
    """A store URL that cannot be turned into a client; the message names the expected format."""


@dataclass(frozen=True, slots=True)
class _Multi:
    """A parsed sentinel or cluster URL."""

    scheme: str
    username: str | None
    password: str | None
    hosts: tuple[tuple[str, int], ...]
    path: tuple[str, ...]
    query: dict[str, str]


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_redis_url(url: str | None) -> bool:
    """True for every URL :func:`client_from_url` accepts (by scheme)."""
    return bool(url) and scheme_of(url or "") in SCHEMES


def client_from_url(url: str, *, socket_connect_timeout: float = 5.0, socket_timeout: float = 10.0) -> RedisClient:
    """A redis-py client for ``url`` (see the module docstring for the formats).

    Raises :class:`RedisUrlError` for an unknown scheme or a malformed
    sentinel/cluster URL. Connecting is lazy: an unreachable server shows up
    as ``redis.RedisError`` on the first command.
    """
    scheme = scheme_of(url)
    timeouts: dict[str, Any] = {"socket_connect_timeout": socket_connect_timeout, "socket_timeout": socket_timeout}
    if scheme in SINGLE_SCHEMES:
        return redis.Redis.from_url(url, **timeouts)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_client(_parse_multi(url), timeouts)
    if scheme in CLUSTER_SCHEMES:
        return _cluster_client(_parse_multi(url), timeouts)
    msg = f"unsupported store URL scheme {scheme or '(none)'!r} in {safe_url(url)!r}; use one of: {', '.join(SCHEMES)}"
    raise RedisUrlError(msg)


def _sentinel_client(parsed: _Multi, timeouts: dict[str, Any]) -> redis.Redis:
    if not parsed.path or not parsed.path[0]:
        msg = f"a sentinel URL needs the service name: {parsed.scheme}://host:port[,host:port]/service_name[/db]"
        raise RedisUrlError(msg)
    if len(parsed.path) > 2:
        msg = f"a sentinel URL has at most /service_name/db, got /{'/'.join(parsed.path)}"
        raise RedisUrlError(msg)
    service = parsed.path[0]
    db = _db(parsed.path[1] if len(parsed.path) > 1 else "")
    sentinel_kwargs: dict[str, Any] = dict(timeouts)
    if "sentinel_password" in parsed.query:
        sentinel_kwargs["password"] = parsed.query["sentinel_password"]
    master_kwargs: dict[str, Any] = {**timeouts, "db": db}
    if parsed.password is not None:
        master_kwargs["password"] = parsed.password
    if parsed.username:
        master_kwargs["username"] = parsed.username
    if parsed.scheme.startswith("rediss"):
        master_kwargs["ssl"] = True
    sentinel = Sentinel(list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, **master_kwargs)  # type: ignore[no-untyped-call]
    master: redis.Redis = sentinel.master_for(service)  # type: ignore[no-untyped-call]
    return master


def _cluster_client(parsed: _Multi, timeouts: dict[str, Any]) -> RedisCluster:
    if parsed.path not in ((), ("",), ("0",)):
        msg = f"a Redis Cluster has only database 0, got /{'/'.join(parsed.path)}"
        raise RedisUrlError(msg)
    kwargs: dict[str, Any] = dict(timeouts)
    if parsed.password is not None:
        kwargs["password"] = parsed.password
    if parsed.username:
        kwargs["username"] = parsed.username
    if parsed.scheme.startswith("rediss"):
        kwargs["ssl"] = True
    nodes = [ClusterNode(host, port) for host, port in parsed.hosts]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, **kwargs)


def _parse_multi(url: str) -> _Multi:
    """``scheme://[user:password@]h1:p1,h2:p2/path?query``; urlsplit cannot read a host list."""
    scheme, _, rest = url.partition("://")
    rest, _, query_text = rest.partition("?")
    netloc, _, path_text = rest.partition("/")
    auth, _, hosts_text = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if auth:
        user, has_password, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    hosts = tuple(_host_port(part, url) for part in hosts_text.split(",") if part)
    if not hosts:
        msg = f"no host in {safe_url(url)!r}; expected {scheme}://host:port[,host:port]"
        raise RedisUrlError(msg)
    path = tuple(part for part in path_text.split("/")) if path_text else ()
    query = {key: values[-1] for key, values in parse_qs(query_text).items()}
    return _Multi(scheme.lower(), username, password, hosts, path, query)


def _host_port(text: str, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:26379
        host, _, port_text = text[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":")
        if not host:
            host, port_text = text, ""
    if not port_text:
        msg = f"host {text!r} in {safe_url(url)!r} needs a port (host:port)"
        raise RedisUrlError(msg)
    try:
        return host, int(port_text)
    except ValueError as exc:
        msg = f"bad port {port_text!r} in {safe_url(url)!r}"
        raise RedisUrlError(msg) from exc


def _db(text: str) -> int:
    if not text:
        return 0
    try:
        return int(text)
    except ValueError as exc:
        msg = f"bad database number {text!r} (expected an integer)"
        raise RedisUrlError(msg) from exc


def safe_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and status output)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    if not at:
        return _mask_query(url)
    user, has_password, _ = auth.partition(":")
    shown = f"{user}:***" if has_password else user
    return _mask_query(f"{scheme}://{shown}@{hosts}{slash}{tail}")


def _mask_query(url: str) -> str:
    base, sep, query = url.partition("?")
    if not sep:
        return url
    parts = []
    for item in query.split("&"):
        key, eq, _ = item.partition("=")
        parts.append(f"{key}=***" if eq and "password" in key.lower() else item)
    return f"{base}?{'&'.join(parts)}"
