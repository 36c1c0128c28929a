"""The console's access rules over HTTP, against a real ``celery-policy web`` process, worker and Redis.

Tokens and roles, the login session, CSRF on every state-changing form, Host and
Origin checks, secure headers, the dry run and typed confirmation of bulk
actions, the activity list, and ``/metrics``.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery
from support.console import OPERATOR_TOKEN, READONLY_TOKEN, Console, console_env
from support.harness import DEADLETTER_POLICY, DLAPP, new_key, wait_record
from support.servers import WorkerProcess

from celery_policy.cli import main
from celery_policy.deadletter.store import Filter, RedisStreamStore

pytestmark = pytest.mark.worker

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
READONLY = {"Authorization": f"Bearer {READONLY_TOKEN}"}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


@contextlib.contextmanager
def logged_in(console: Console, token: str) -> Iterator[httpx.Client]:
    """A browser-like client with a session cookie (login form, CSRF token from the page)."""
    with httpx.Client(base_url=console.base, timeout=10) as session:
        page = session.get("/login")
        answer = session.post("/login", data={"token": token, "csrf": csrf_of(page.text), "next": "/dead-letters"})
        assert answer.status_code == 303, answer.text
        yield session


def test_a_non_loopback_bind_without_a_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CELERY_POLICY_WEB_TOKEN", raising=False)
    monkeypatch.delenv("CELERY_POLICY_WEB_READONLY_TOKEN", raising=False)
    assert main(["web", "--url", "redis://127.0.0.1:1/0", "--bind", "0.0.0.0:8808"]) == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in capsys.readouterr().err


def test_celery_policy_web_runs_as_a_celery_sub_command(
    broker_url: str, tmp_path: Path, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    """``celery -A proj policy web``: the app's broker is the store, its policy file the policy pages'."""
    wait_record(store, app.send_task("dl.permanent", args=(new_key("sub"),)).id)
    celery = [str(Path(sys.executable).with_name("celery")), "-A", DLAPP, "policy", "web"]
    env = console_env(broker_url, DEADLETTER_POLICY)
    sub = Console([], env, tmp_path / "sub.log", command=celery).start()
    try:
        policies = httpx.get(sub.base + "/policies", headers=READONLY)
        assert policies.status_code == 200
        assert '<a href="/policies/dl.crash">dl.crash</a>' in policies.text
        listing = httpx.get(sub.base + "/dead-letters", headers={**READONLY, "Accept": "application/json"}).json()
        assert "dl.permanent" in {r["task"] for r in listing["records"]}
    finally:
        sub.stop()


def test_a_short_token_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CELERY_POLICY_WEB_TOKEN", "secret")
    assert main(["web", "--url", "redis://127.0.0.1:1/0"]) == 2
    assert "shorter than 16 characters" in capsys.readouterr().err


def test_without_a_token_pages_send_to_the_login_and_a_wrong_bearer_gets_401(console: Console) -> None:
    answer = httpx.get(console.base + "/dead-letters?task=dl.*")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Fdead-letters%3Ftask%3Ddl.%2A"
    assert httpx.get(console.base + "/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(console.base + "/dead-letters/replay", data={"task": "x"}).status_code == 401


def test_a_foreign_host_or_a_cross_origin_post_is_refused(console: Console) -> None:
    # DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends Host: evil.example
    foreign = httpx.get(console.base + "/dead-letters", headers={**OPERATOR, "Host": f"evil.example:{console.port}"})
    assert (foreign.status_code, foreign.text) == (403, "unknown Host header\n")
    cross = httpx.post(
        console.base + "/dead-letters/replay", headers={**OPERATOR, "Origin": "http://evil.example"}, data={}
    )
    assert (cross.status_code, cross.text) == (403, "cross-origin request refused\n")


def test_every_answer_carries_the_secure_headers(console: Console) -> None:
    for answer in (httpx.get(console.base + "/login"), httpx.get(console.base + "/dead-letters", headers=READONLY)):
        assert answer.headers["content-security-policy"].startswith("default-src 'none'; style-src 'self';")
        assert "script-src" not in answer.headers["content-security-policy"]  # no script may run at all
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
    assert "<script" not in httpx.get(console.base + "/dead-letters", headers=READONLY).text


def test_the_session_cookie_is_http_only_and_same_site_strict(console: Console) -> None:
    page = httpx.get(console.base + "/login")
    cookie = page.headers["set-cookie"]
    assert "celery_policy_session=" in cookie
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()


def test_a_post_without_the_csrf_token_is_refused(
    console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    task_id = app.send_task("dl.permanent", args=(new_key("csrf"),)).id
    record = wait_record(store, task_id)
    with logged_in(console, OPERATOR_TOKEN) as session:
        missing = session.post(f"/dead-letters/{record.id}/replay", data={})
        wrong = session.post(f"/dead-letters/{record.id}/replay", data={"csrf": "x" * 43})
        assert (missing.status_code, wrong.status_code) == (403, 403)
        assert missing.text == "CSRF token missing or wrong\n"
        # the record is still there: nothing was replayed
        assert [r.id for r in store.iter(Filter(ids=(record.id or "",)))] == [record.id]
        # the same session with the page's token may
        page = session.get(f"/dead-letters/{record.id}")
        done = session.post(f"/dead-letters/{record.id}/replay", data={"csrf": csrf_of(page.text)})
        assert done.status_code == 200
        assert "1 replayed" in done.text
    assert list(store.iter(Filter(ids=(record.id or "",)))) == []


def test_the_read_only_role_can_look_but_not_replay_or_purge(
    console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    task_id = app.send_task("dl.permanent", args=(new_key("ro"),)).id
    record = wait_record(store, task_id)
    assert httpx.get(console.base + f"/dead-letters/{record.id}", headers=READONLY).status_code == 200
    bearer = httpx.post(console.base + f"/dead-letters/{record.id}/replay", headers=READONLY)
    assert (bearer.status_code, bearer.text) == (403, "this action needs the operator role\n")
    with logged_in(console, READONLY_TOKEN) as session:
        page = session.get(f"/dead-letters/{record.id}")
        assert 'id="replay"' not in page.text  # no button for this role
        token = csrf_of(page.text)
        assert session.post(f"/dead-letters/{record.id}/replay", data={"csrf": token}).status_code == 403
        assert session.post("/dead-letters/purge", data={"csrf": token, "confirm": "delete 1"}).status_code == 403
    assert [r.id for r in store.iter(Filter(ids=(record.id or "",)))] == [record.id]


def test_bulk_replay_shows_the_dry_run_count_first(
    console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    ids = [app.send_task("dl.once", args=(new_key("bulk"), n)).id for n in (1, 2, 3)]
    for task_id in ids:
        wait_record(store, task_id)
    dry = httpx.post(console.base + "/dead-letters/replay", headers=OPERATOR, data={"task": "dl.once"})
    assert dry.json() == {"dry_run": True, "count": 3}
    assert len(list(store.iter(Filter(task="dl.once")))) == 3  # the dry run published nothing
    stale = httpx.post(
        console.base + "/dead-letters/replay", headers=OPERATOR, data={"task": "dl.once", "confirm_count": "2"}
    )
    assert stale.json() == {"dry_run": True, "count": 3}  # a confirmation of another count is asked again
    done = httpx.post(
        console.base + "/dead-letters/replay", headers=OPERATOR, data={"task": "dl.once", "confirm_count": "3"}
    ).json()
    assert (len(done["replayed"]), done["failed"], done["skipped"]) == (3, [], [])
    results = sorted(app.AsyncResult(new_id).get(timeout=20) for _, new_id in done["replayed"])
    assert results == [2, 4, 6]  # each replay ran on the worker and succeeded
    assert list(store.iter(Filter(task="dl.once"))) == []


def test_bulk_replay_takes_a_spread_and_an_incident_label(
    console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    ids = [app.send_task("dl.once", args=(new_key("spread"), n)).id for n in (5, 6)]
    for task_id in ids:
        wait_record(store, task_id)
    data = {"task": "dl.once", "confirm_count": "2", "name": "INC-7"}
    bad = httpx.post(console.base + "/dead-letters/replay", headers=OPERATOR, data={**data, "spread": "soon"})
    assert bad.status_code == 400
    assert len(list(store.iter(Filter(task="dl.once")))) == 2  # a bad spread publishes nothing
    started = time.monotonic()
    done = httpx.post(console.base + "/dead-letters/replay", headers=OPERATOR, data={**data, "spread": "2s"}).json()
    assert (len(done["replayed"]), done["failed"]) == (2, [])
    assert sorted(app.AsyncResult(new_id).get(timeout=20) for _, new_id in done["replayed"]) == [10, 12]
    assert time.monotonic() - started < 20
    with logged_in(console, OPERATOR_TOKEN) as session:
        activity = session.get("/activity").text
    assert "<code>name=INC-7</code>" in activity
    assert "<code>spread=2s</code>" in activity


def test_purge_needs_the_typed_confirmation_and_is_in_the_activity_list(
    console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    for _ in range(2):
        wait_record(store, app.send_task("dl.unknown", args=(new_key("purge"),)).id)
    with logged_in(console, OPERATOR_TOKEN) as session:
        token = csrf_of(session.get("/dead-letters").text)
        ask = session.post("/dead-letters/purge", data={"csrf": token, "task": "dl.unknown"})
        assert ask.status_code == 200
        assert "Type <code>delete 2</code> to confirm" in ask.text
        wrong = session.post("/dead-letters/purge", data={"csrf": token, "task": "dl.unknown", "confirm": "yes"})
        assert wrong.status_code == 400
        assert len(list(store.iter(Filter(task="dl.unknown")))) == 2
        done = session.post("/dead-letters/purge", data={"csrf": token, "task": "dl.unknown", "confirm": "delete 2"})
        assert "Deleted 2 dead letters" in done.text
        assert list(store.iter(Filter(task="dl.unknown"))) == []
        activity = session.get("/activity").text
    row = '<td>operator</td><td><span class="reason">purge</span></td><td><code>task=dl.unknown</code>'
    assert row in activity


def test_redacted_arguments_are_never_rendered(
    console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    secret = "hunter2-" + new_key("pw")
    record = wait_record(store, app.send_task("dl.secret", args=(new_key("s"), secret)).id)
    for path in (f"/dead-letters/{record.id}", "/dead-letters", "/dead-letters?task=dl.secret"):
        page = httpx.get(console.base + path, headers=READONLY)
        assert page.status_code == 200
        assert secret not in page.text
    assert "***" in httpx.get(console.base + f"/dead-letters/{record.id}", headers=READONLY).text


def test_metrics_serves_the_store_gauges_and_the_replays(
    console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    """The store gauge of a new dead letter, and the published-replay counter moving by the one replay made here."""
    from support.servers import wait_for

    def replayed(text: str) -> float:
        found = re.search(r'^celery_policy_replayed_total\{outcome="published",task="dl.once"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    record = wait_record(store, app.send_task("dl.once", args=(new_key("m"), 7)).id)
    before = replayed(httpx.get(console.base + "/metrics", headers=READONLY).text)
    done = httpx.post(console.base + f"/dead-letters/{record.id}/replay", headers=OPERATOR).json()
    assert len(done["replayed"]) == 1
    assert app.AsyncResult(done["replayed"][0][1]).get(timeout=20) == 14
    wait_record(store, app.send_task("dl.transient", args=(new_key("g"),)).id)

    def gauges() -> str | None:
        text = httpx.get(console.base + "/metrics", headers=READONLY).text
        return text if 'celery_policy_dead_letters{reason="exhausted",task="dl.transient"}' in text else None

    text = wait_for("the store gauge of dl.transient", gauges, timeout=15, interval=0.5)
    assert replayed(text) == before + 1


def test_a_tasks_policy_page_shows_each_effective_field_with_the_file_and_line_that_set_it(console: Console) -> None:
    """The provenance the README promises on the policy pages: a task's own entry and the defaults, by line."""
    page = httpx.get(console.base + "/policies/dl.crash", headers=READONLY)
    assert page.status_code == 200

    def source_of(field: str, value: str) -> str:
        cells = rf'<code>{re.escape(field)}</code></td><td>{value}</td><td class="muted">([^<]*)</td>'
        row = re.search(cells, page.text)
        assert row, f"no row {field} = {value} on /policies/dl.crash"
        return row.group(1)

    assert re.search(r"deadletter\.yaml:24\b", source_of("ack.max_redeliveries", "2"))  # tasks.dl.crash
    assert re.search(r"deadletter\.yaml:13\b", source_of("retry.max_retries", "2"))  # defaults
