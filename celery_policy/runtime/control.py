"""The ``policy_info`` remote-control command and the ``policy_loaded`` boot event.

Importing this module registers ``policy_info`` with Celery's worker control
panel, so ``app.control.broadcast("policy_info", reply=True)`` (what
``celery-policy status`` sends) and ``celery -A proj inspect policy_info``
reach every worker of the app that installed a policy. The command runs in the
worker's main process and answers from data computed once per process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import sys
import weakref
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from celery import signals
from celery.worker.control import inspect_command

from celery_policy.appinfo import setting
from celery_policy.fleet import Snapshot, snapshot
from celery_policy.patterns import is_glob, unmatched_names
from celery_policy.taskoptions import composition_problems, needs_method

if TYPE_CHECKING:
    from celery import Celery

    from celery_policy.runtime.install import AppRuntime

logger = structlog.get_logger("celery_policy")


def package_version() -> str:
    try:
        return version("celery-policy")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
        return "unknown"


@dataclass(slots=True)
class BootInfo:
    """What a worker reports about its policy: computed at install, the snapshot once tasks are known."""

    app: weakref.ref[Celery]
    runtime: weakref.ref[AppRuntime]
    loaded_at: str
    files: list[dict[str, str]]
    snapshot: Snapshot | None = None
    task_names: list[str] = field(default_factory=list)
    warned_names: bool = False  # the unmatched-names warning is logged once per process

    def current(self) -> Snapshot:
        """The snapshot over the app's governed tasks; recomputed when tasks were registered since."""
        app, runtime = self.app(), self.runtime()
        if app is None or runtime is None:  # pragma: no cover - the app is gone
            msg = "the app that installed the policy no longer exists"
            raise RuntimeError(msg)
        names = sorted(name for name in list(app.tasks.keys()) if runtime.governs(name))
        if self.snapshot is None or names != self.task_names:
            self.snapshot = snapshot(runtime.policy, names)
            self.task_names = names
        return self.snapshot


_BOOTS: weakref.WeakKeyDictionary[Any, BootInfo] = weakref.WeakKeyDictionary()


def announce(app: Celery, runtime: AppRuntime) -> None:
    """Remember the policy files and load time for ``policy_info``. Called by ``install()``.

    ``policy_loaded`` is logged when a worker of the app boots (``worker_init``:
    the app is finalized, so its tasks are known), not in every process that
    imports the app: ``celery-policy check --app`` and producers stay quiet.
    """
    files = [{"path": os.path.abspath(path), "sha256": _file_sha256(path)} for path in runtime.policy.files]
    _BOOTS[app] = BootInfo(weakref.ref(app), weakref.ref(runtime), _now(), files)


STRICT_TASKS = "CELERY_POLICY_STRICT_TASKS"  # "1": a policy name matching no registered task stops the boot


@signals.worker_init.connect(weak=False)  # type: ignore[untyped-decorator]  # celery is untyped
def _log_at_worker_init(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    info = _BOOTS.get(app) if app is not None else None
    if info is not None:
        log_loaded(info)
        if setting(app, STRICT_TASKS) == "1":
            problems = unmatched_report(app, info)
            if problems:
                # Celery logs and swallows an Exception raised by a signal handler; SystemExit stops the boot
                sys.stderr.write(f"celery-policy: the policy stops the worker's boot\n{problems}\n")
                sys.stderr.flush()
                logger.error("policy_unmatched_tasks", detail=problems, strict=True)
                raise SystemExit(1)


@signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]  # celery is untyped
def _warn_at_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    info = _BOOTS.get(app) if app is not None else None
    if info is None or info.warned_names:
        return
    info.warned_names = True
    problems = unmatched_report(app, info)
    if problems:
        logger.warning("policy_unmatched_tasks", detail=problems, strict=False)
    runtime = info.runtime()
    if runtime is not None:
        log_not_composed(app, runtime)


def log_not_composed(app: Any, runtime: AppRuntime) -> None:
    """``policy_not_composed`` for each task whose own class keeps the policy from wrapping a method it needs."""
    publish_retry = "producer" in runtime.policy.document.model_fields_set
    for name, task in sorted(dict(app.tasks).items()):
        compiled = runtime.tasks.get(name)
        if compiled is None:
            continue
        policy = compiled.policy
        for method, problem in composition_problems(task):
            needed = needs_method(
                method,
                hard_limit=policy.timeout.hard is not None,
                self_retry=policy.retry.self_retry == "policy",
                publish_retry=publish_retry,
            )
            if needed:
                logger.warning("policy_not_composed", task=name, method=method, detail=f"task '{name}': {problem}")


def unmatched_report(app: Any, info: BootInfo) -> str:
    """Compiler-style lines for the exact names and globs of ``tasks`` that match no registered task."""
    runtime = info.runtime()
    if runtime is None:  # pragma: no cover - the app is gone
        return ""
    policy = runtime.policy
    lines: list[str] = []
    for name, close in unmatched_names(policy.document.tasks, list(app.tasks.keys())):
        where = policy.key_location(("tasks", name))
        kind = "pattern" if is_glob(name) else "task"
        text = f"{kind} '{name}' matches no registered task" if kind == "pattern" else f"no task named '{name}'"
        line = f"{where}: {text}" if where is not None else text
        if close:
            line += f" — did you mean '{close}'?"
        lines.append(line)
    return "\n".join(lines)


def log_loaded(info: BootInfo) -> None:
    """The ``policy_loaded`` event: fingerprint, env, files with sha256, number of tasks, version."""
    current = info.current()
    logger.info(
        "policy_loaded",
        fingerprint=current.fingerprint,
        env=current.env,
        files=info.files,
        tasks=len(current.tasks),
        version=package_version(),
    )


def boot_info(app: Celery) -> BootInfo | None:
    return _BOOTS.get(app)


def policy_report(app: Celery, hostname: str, *, detail: bool = False) -> dict[str, Any]:
    """The ``policy_info`` reply: fingerprint, env, files with sha256, load time, version, hostname, tasks.

    ``detail`` adds the whole snapshot (field values and sources), which
    ``status --expect`` needs to name the fields that differ.
    """
    info = boot_info(app)
    if info is None:
        return {"hostname": hostname, "error": "celery-policy is not installed on this app"}
    current = info.current()
    reply: dict[str, Any] = {
        "hostname": hostname,
        "fingerprint": current.fingerprint,
        "env": current.env,
        "files": info.files,
        "loaded_at": info.loaded_at,
        "version": package_version(),
        "tasks": sorted(current.tasks),
    }
    if detail:
        reply["snapshot"] = current.to_json()
    return reply


@inspect_command(  # type: ignore[untyped-decorator]
    args=[("detail", bool)],
    signature="[detail=False]",
)
def policy_info(state: Any, detail: bool = False, **kwargs: Any) -> dict[str, Any]:
    """celery-policy: fingerprint, env, files (sha256), load time and version of the worker's policy."""
    consumer = state.consumer
    hostname = getattr(consumer, "hostname", None) or socket.gethostname()
    return policy_report(consumer.app, hostname, detail=bool(detail))


def _file_sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
