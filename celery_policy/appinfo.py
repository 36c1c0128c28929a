"""The one place an ``-A`` spec becomes a Celery app, and the app settings celery-policy reads.

:func:`import_app` finds the app the way ``celery -A`` does (``proj`` ->
``proj.app``/``proj.celery``, ``proj.celery`` -> its ``app``/``celery``
attribute, or ``module:attr``) with the working directory on ``sys.path``.
Whatever the app prints while it loads goes to stderr: stdout carries the
commands' reports (json, sarif). No broker connection is made.

Celery is imported when a function here is called, never at import time, so
the commands can import this module without paying for Celery.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any


class AppLoadError(Exception):
    """The ``-A`` / ``--app`` module could not be imported, holds no Celery app, or its tasks do not load."""


def import_app(spec: str, cwd: str | None = None, *, finalize: bool = False) -> Any:
    """The Celery app ``spec`` names (see the module docstring). Raises :class:`AppLoadError`.

    With ``finalize``, the task modules the app declares are imported (``include=``,
    ``imports``, ``autodiscover_tasks``, as a worker does) and the app is finalized,
    so ``app.tasks`` holds every task.
    """
    directory = os.path.abspath(cwd or os.getcwd())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    celery: Any = importlib.import_module("celery")  # celery ships no type information
    find_app = importlib.import_module("celery.app.utils").find_app
    try:
        with contextlib.redirect_stdout(sys.stderr):
            app = find_app(spec)
    except (Exception, SystemExit) as exc:
        msg = f"cannot import Celery app '{spec}': {type(exc).__name__}: {exc}"
        raise AppLoadError(msg) from exc
    if not isinstance(app, celery.Celery):
        msg = f"'{spec}' is not a Celery app (it is {type(app).__name__})"
        raise AppLoadError(msg)
    if finalize:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                app.loader.import_default_modules()
                app.finalize(auto=True)
        except (Exception, SystemExit) as exc:
            msg = f"cannot load the tasks of Celery app '{spec}': {type(exc).__name__}: {exc}"
            raise AppLoadError(msg) from exc
    return app


def spec_of(app: Any) -> str | None:
    """``module:attribute`` of an imported module that holds ``app`` (as ``celery -A`` would have named it)."""
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attribute}"
    return None


def import_root(spec: str, default: str) -> str:
    """The directory the app's top-level module was imported from (``default`` when unknown)."""
    module_name = spec.partition(":")[0]
    top = module_name.split(".")[0]
    module = sys.modules.get(top)
    location = getattr(module, "__file__", None) if module is not None else None
    if not isinstance(location, str) or not location:
        return default
    path = os.path.dirname(os.path.abspath(location))
    if os.path.basename(location) == "__init__.py":
        path = os.path.dirname(path)
    return path


def setting(app: Any, name: str) -> str | None:
    """A celery-policy setting such as ``CELERY_POLICY_FILE``: the environment variable, else the app's
    configuration (Django: ``CELERY_POLICY_FILE`` in settings.py, read through the ``CELERY`` namespace)."""
    value = os.environ.get(name)
    if value:
        return value
    try:  # Django: app.config_from_object("django.conf:settings", namespace="CELERY")
        configured = app.conf.get(name) or app.conf.get(name.removeprefix("CELERY_").lower())
    except Exception:  # configuration not loadable yet
        return None
    return str(configured) if configured else None
