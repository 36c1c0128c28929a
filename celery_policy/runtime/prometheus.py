"""The worker's Prometheus endpoint: one HTTP server in the main process, counters from every pool process.

Switched on by the policy (``observability: {prometheus: {port: 9808}}``), off
by default. At ``worker_init`` (main process, before the pool forks) this

1. points ``PROMETHEUS_MULTIPROC_DIR`` at a directory (the policy's
   ``multiprocess_dir``, else the one already set, else a fresh temporary one)
   and empties a directory it owns, since stale files would add old counts;
2. adds the decision counters (:class:`celery_policy.metrics.MultiprocessCounters`)
   as a decision sink, so the pool processes forked afterwards count into their
   own files;
3. serves ``/metrics`` on ``address:port``: prometheus_client's
   ``MultiProcessCollector`` over that directory (the sum over all processes,
   the application's own multiprocess metrics included) plus ``celery_policy_info``.

A port that cannot be bound is logged (``prometheus_endpoint_failed``) and the
worker runs on: metrics never stop work.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from celery import signals

from celery_policy.errors import PolicyError
from celery_policy.metrics import INSTALL_HINT, InfoCollector, MultiprocessCounters
from celery_policy.runtime import observability

if TYPE_CHECKING:
    from celery import Celery

    from celery_policy.model import PrometheusSettings
    from celery_policy.resolve import Policy

logger = structlog.get_logger("celery_policy")
ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"

__all__ = ["Endpoint", "configure", "endpoint_for"]


@dataclass
class Endpoint:
    settings: PrometheusSettings
    server: Any = None
    thread: Any = None
    directory: str | None = None
    owned_directory: bool = False  # made here: removed at shutdown

    @property
    def url(self) -> str:
        host = self.settings.address
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        port = self.server.server_port if self.server is not None else self.settings.port
        return f"http://{shown}:{port}/metrics"


_APPS: weakref.WeakKeyDictionary[Any, Endpoint] = weakref.WeakKeyDictionary()


def configure(app: Celery, policy: Policy) -> None:
    """Remember that ``app``'s workers serve metrics; PolicyError now when prometheus_client is missing.

    Called by ``install()`` before it changes anything. Nothing starts here:
    producers and ``celery-policy check --app`` import the app too.
    """
    settings = policy.document.observability.prometheus
    if settings is None:
        return
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        where = policy.location(("observability", "prometheus")) or policy.files[0]
        msg = f"observability.prometheus is set but {INSTALL_HINT} ({where})"
        raise PolicyError(msg) from exc
    _APPS[app] = Endpoint(settings)


def endpoint_for(app: Celery) -> Endpoint | None:
    return _APPS.get(app)


def _directory(endpoint: Endpoint) -> str:
    configured = endpoint.settings.multiprocess_dir
    if configured:
        os.makedirs(configured, exist_ok=True)
        for stale in glob.glob(os.path.join(configured, "*.db")):  # counts of an earlier run of this worker
            os.remove(stale)
        return configured
    inherited = os.environ.get(ENV_DIR)
    if inherited:  # the operator's directory: its files may belong to other processes, leave them
        os.makedirs(inherited, exist_ok=True)
        return inherited
    endpoint.owned_directory = True
    return tempfile.mkdtemp(prefix="celery-policy-metrics-")


@signals.worker_init.connect(weak=False)  # type: ignore[untyped-decorator]  # celery is untyped
def _start(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    endpoint = _APPS.get(app) if app is not None else None
    if endpoint is None or endpoint.server is not None:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = _directory(endpoint)
    os.environ[ENV_DIR] = directory  # read by prometheus_client whenever a process opens its file
    endpoint.directory = directory
    observability.add_sink(MultiprocessCounters().record)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    registry.register(InfoCollector(lambda: _info(app)))
    try:
        endpoint.server, endpoint.thread = start_http_server(
            endpoint.settings.port, addr=endpoint.settings.address, registry=registry
        )
    except OSError as exc:
        logger.error(
            "prometheus_endpoint_failed", address=endpoint.settings.address, port=endpoint.settings.port, error=str(exc)
        )
        return
    logger.info("prometheus_endpoint", url=endpoint.url, multiprocess_dir=directory)


def _info(app: Any) -> dict[str, str] | None:
    from celery_policy.runtime.control import boot_info, package_version

    info = boot_info(app)
    if info is None:
        return None
    current = info.current()
    return {"fingerprint": current.fingerprint, "env": current.env or "", "version": package_version()}


@signals.worker_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
def _stop(sender: Any = None, **kwargs: Any) -> None:
    for endpoint in list(_APPS.values()):
        if endpoint.server is None:
            continue
        endpoint.server.shutdown()
        endpoint.server.server_close()
        endpoint.server = None
        if endpoint.owned_directory and endpoint.directory:
            shutil.rmtree(endpoint.directory, ignore_errors=True)
