"""kombu transports installed by celery-policy (reliable fetch, leases and delayed delivery for the Redis broker).

``celery_policy.transport.redis:Transport`` is kombu's Redis transport with
the take made atomic and leased: see that module's docstring; delayed
delivery is :mod:`celery_policy.transport.delayed`. :func:`configure` is the
switch ``celery_policy.install`` calls.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery_policy.errors import PolicyError

if TYPE_CHECKING:
    from celery_policy.resolve import Policy

logger = logging.getLogger("celery_policy.transport")

RELIABLE_TRANSPORT = "celery_policy.transport.redis:Transport"
REDIS_SCHEMES = frozenset({"redis", "rediss"})


def uses_late_ack(policy: Policy) -> bool:
    """True when the defaults or any task entry of the (environment-merged) document set ``ack.late: true``."""
    document = policy.document
    return document.defaults.ack.late or any(task.ack.late for task in document.tasks.values())


def broker_scheme(app: Any) -> str | None:
    try:
        url = app.conf.broker_url or app.conf.broker_read_url
    except Exception:  # an unloadable config: no broker to judge
        return None
    if isinstance(url, (list, tuple)):
        url = url[0] if url else None
    if not url or "://" not in str(url):
        return None
    return str(url).split("://", 1)[0].lower()


def reliable_fetch_wanted(app: Any, policy: Policy) -> bool:
    """The decision: ``worker.reliable_fetch`` if set, else on for a redis:// broker when any task acks late."""
    setting = policy.document.worker.reliable_fetch
    if setting is False:
        return False
    if broker_scheme(app) not in REDIS_SCHEMES:
        if setting:
            logger.warning("worker.reliable_fetch is on but the broker is not redis:// or rediss://: left off")
        return False
    current = app.conf.broker_transport
    if current not in (None, "", "redis", "rediss", RELIABLE_TRANSPORT):
        logger.warning("worker.reliable_fetch: broker_transport is set to %r: left as it is", current)
        return False
    if (app.conf.broker_transport_options or {}).get("global_keyprefix"):
        logger.warning("worker.reliable_fetch does not support broker_transport_options.global_keyprefix: left off")
        return False
    return bool(setting) or uses_late_ack(policy)


def decide(app: Any, policy: Policy) -> bool:
    """Whether the worker takes with reliable fetch: :func:`reliable_fetch_wanted`, gated on the installed kombu.

    On a kombu whose Redis transport internals moved, or outside the tested lines
    (:mod:`celery_policy.support`), a policy that asked for ``worker.reliable_fetch: true``
    raises :class:`PolicyError` at boot; one that left it to the default falls back to
    kombu's own fetch with a warning. Changes nothing.
    """
    if not reliable_fetch_wanted(app, policy):
        return False
    from celery_policy.support import reliable_fetch_problem

    problem = reliable_fetch_problem()
    if problem is None:
        return True
    if policy.document.worker.reliable_fetch:
        where = policy.location(("worker", "reliable_fetch")) or policy.files[0]
        msg = (
            f"{where}: worker.reliable_fetch is on, but {problem}\n"
            "  help: install a tested kombu (pip install 'kombu>=5.3.7,<5.8') or set worker.reliable_fetch: false"
        )
        raise PolicyError(msg)
    logger.warning(
        "reliable fetch left off (kombu's own fetch is used): %s; set worker.reliable_fetch: false to silence this",
        problem,
    )
    return False


def delayed_delivery_wanted(policy: Policy, reliable: bool) -> bool:
    """Redis: ``worker.delayed_delivery`` if set, else on whenever reliable fetch is (it needs reliable fetch)."""
    setting = policy.document.worker.delayed_delivery
    if setting is False:
        return False
    if not reliable:
        if setting:
            logger.warning("worker.delayed_delivery on Redis needs reliable fetch, which is off: left off")
        return False
    return True


def configure(app: Any, reliable: bool, delayed: bool = False) -> None:
    """Switch the app's broker transport to reliable fetch (and delayed delivery) when :func:`decide` said so."""
    if reliable:
        app.conf.broker_transport = RELIABLE_TRANSPORT
    if reliable and delayed:
        options = dict(app.conf.broker_transport_options or {})
        options["delayed_delivery"] = True
        app.conf.broker_transport_options = options
