"""An app with its own Task base classes: one the policy composes with, one it cannot (CP311)."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task


def log_failure(*args: Any) -> None:
    return None


class AppTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        log_failure(exc)  # no super(): the policy still composes with it


class StaticHookTask(Task):  # type: ignore[misc]
    on_failure = staticmethod(log_failure)


app = Celery("lintapp_baseclass", broker="redis://127.0.0.1:1/0", set_as_current=False, task_cls=AppTask)


@app.task(name="jobs.fine", shared=False)
def fine() -> None:
    return None


@app.task(name="jobs.static", base=StaticHookTask, shared=False)
def static() -> None:
    return None


@app.task(name="jobs.patched", shared=False)
def patched() -> None:
    return None


patched.retry = lambda *args, **kwargs: None  # on the instance: hides the class's (composed) retry
