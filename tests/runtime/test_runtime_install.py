"""install(app): what it puts on task classes, and that a bad policy stops boot without touching anything.

The class-attribute checks run in-process on a fresh app (install + finalize,
no task is executed); the boot failure runs a real ``celery worker``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, Task
from support.harness import RUNTIME_POLICIES, runtime_worker
from support.servers import ProcessStartError, RedisServer

import celery_policy
from celery_policy.errors import PolicyError
from celery_policy.runtime.install import runtime_for

GOOD = RUNTIME_POLICIES / "inproc.yaml"
BAD = RUNTIME_POLICIES / "bad_import.yaml"
MARKER = "__celery_policy_runtime__"
LOCATED_CP107 = r"bad_import\.yaml:6:\d+: CP107 error: cannot import 'builtins\.ConnectionErorr'"
ATTRS = ("max_retries", "time_limit", "soft_time_limit", "acks_late", "reject_on_worker_lost", "autoretry_for")


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("rt-inproc", task_cls=celery_policy.PolicyTask, broker="memory://", backend="cache+memory://")
    yield app
    app.close()


def _declare(app: Celery) -> None:
    @app.task(
        name="inproc.decorated",
        bind=True,
        autoretry_for=(ConnectionError,),
        max_retries=10,
        retry_backoff=True,
        time_limit=99,
        shared=False,  # a shared task would be added to every later app of this process
    )
    def decorated(self: Task, key: str) -> str:
        return key

    @app.task(name="inproc.plain", shared=False)
    def plain(key: str) -> str:
        return key


def _snapshot(task: Task) -> dict[str, Any]:
    found = {name: getattr(task, name, None) for name in ATTRS}
    found["run"] = task.__dict__.get("run")
    found["_orig_run"] = task.__dict__.get("_orig_run")
    return found


@pytest.mark.parametrize("order", ["install-then-declare", "declare-finalize-then-install"])
def test_policy_values_replace_the_decorator_options_on_the_task_class(app: Celery, order: str) -> None:
    if order == "install-then-declare":
        celery_policy.install(app, GOOD)
        _declare(app)
        app.finalize()
    else:
        _declare(app)
        app.finalize()
        celery_policy.install(app, GOOD)
    task = app.tasks["inproc.decorated"]

    # the policy's retry.max_retries (2) budgets the retries the policy decides; the task's own
    # self.retry() keeps the decorator's cap (retry.self_retry is "task")
    assert type(task).max_retries == 10
    assert (task.soft_time_limit, task.time_limit) == (1.5, 2.0)  # decorator: time_limit=99
    assert (task.acks_late, task.reject_on_worker_lost) == (True, True)
    # the policy's wrapper, then (timeout.soft is set) the soft-limit backstop, then the body; celery's
    # autoretry wrapper (retry_backoff, 10 retries) is gone
    assert "_orig_run" not in task.__dict__
    assert hasattr(task.run, MARKER)
    backstop = task.run.__wrapped__
    assert hasattr(backstop, MARKER)
    assert backstop.__qualname__.startswith("timed.")
    assert not hasattr(backstop.__wrapped__, MARKER)
    assert backstop.__wrapped__.__name__ == "decorated"
    assert task.run("k") == "k"  # called directly: the body runs as plain code


def test_install_on_a_finalized_app_with_an_unimportable_class_raises_and_changes_nothing(app: Celery) -> None:
    _declare(app)
    app.finalize()
    tasks = {name: app.tasks[name] for name in ("inproc.decorated", "inproc.plain")}
    before = {name: _snapshot(task) for name, task in tasks.items()}
    routes, annotations = app.conf.task_routes, app.conf.task_annotations

    with pytest.raises(PolicyError) as raised:
        celery_policy.install(app, BAD)

    assert re.search(LOCATED_CP107, str(raised.value))
    assert {name: _snapshot(task) for name, task in tasks.items()} == before
    assert before["inproc.decorated"]["max_retries"] == 10
    assert before["inproc.decorated"]["time_limit"] == 99
    assert app.conf.task_routes == routes
    assert app.conf.task_annotations == annotations
    assert runtime_for(app) is None
    celery_policy.install(app, GOOD)  # nothing half-applied is left behind: a good policy still installs
    assert type(tasks["inproc.decorated"]).time_limit == 2.0


def test_finalizing_an_app_whose_policy_names_an_unimportable_class_raises_before_any_task_changes(app: Celery) -> None:
    celery_policy.install(app, BAD)  # imports are deferred to the first task binding
    _declare(app)

    with pytest.raises(PolicyError, match=r"bad_import\.yaml:6:\d+: CP107"):
        app.finalize()

    runtime = runtime_for(app)
    assert runtime is not None
    assert runtime.tasks == {}  # the references are checked before the first task's policy is compiled or applied
    # Celery may have created some tasks before the binding that raised (shared tasks of other apps in this
    # process come first); none of them carries the policy
    for task in list(app._tasks.values()):
        assert not hasattr(task.__dict__.get("run"), MARKER)
        if task.name.startswith("inproc."):
            assert type(task).max_retries in (3, 10)  # Celery's or the decorator's, never the policy's 2
            assert task.time_limit in (None, 99)
            assert not task.acks_late


@pytest.mark.worker
def test_a_worker_whose_policy_names_an_unimportable_class_exits_non_zero_with_the_location(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url_for(6)
    worker = runtime_worker(tmp_path, broker_url=url, policy=BAD, name="bad-policy")

    with pytest.raises(ProcessStartError, match=r"exited with code"):
        worker.start()

    assert worker.returncode not in (None, 0)
    log = worker.log_text()
    assert re.search(r"tests/support/apps/runtime/" + LOCATED_CP107, log)
    assert "help: check the spelling" in log
    assert " ready." not in log
    worker.stop()
