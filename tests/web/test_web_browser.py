"""The console in a real browser: Debian's chromium, headless, driven by Playwright (no browser download).

Against a real prefork worker, Redis and the store: log in, see a dead letter
the worker produced, replay it and see the task succeed; be refused without a
token, refused a POST without the CSRF token, and the read-only role cannot
replay. The run writes screenshots of the main pages to docs/screenshots/
(the README shows them).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from playwright.sync_api import Browser, Page, sync_playwright
from support.console import OPERATOR_TOKEN, READONLY_TOKEN, Console
from support.harness import new_key, wait_final, wait_record
from support.servers import REPO_ROOT, WorkerProcess, wait_for

from celery_policy.deadletter.store import Filter, RedisStreamStore

pytestmark = pytest.mark.worker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "chromium is not installed; run: sudo apt-get install -y chromium (or ./scripts/bootstrap.sh as root)",
            pytrace=False,
        )
    with sync_playwright() as p:
        # --no-sandbox: the tests run as root in CI, where chromium's sandbox refuses to start
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        yield context.new_page()
    finally:
        context.close()


def log_in(page: Page, console: Console, token: str) -> None:
    page.goto(console.base + "/dead-letters")
    assert page.url.startswith(console.base + "/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(console.base + "/dead-letters")


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def test_an_operator_logs_in_sees_a_real_dead_letter_and_replays_it(
    page: Page,
    console: Console,
    worker: WorkerProcess,
    app: Celery,
    store: RedisStreamStore,
    client: redis.Redis,
) -> None:
    # some history for the groups and the chart, all from the real worker
    for task, args in (("dl.permanent", 3), ("dl.transient", 2), ("dl.secret", 1)):
        for _ in range(args):
            extra = ("hunter2-secret",) if task == "dl.secret" else ()
            wait_record(store, app.send_task(task, args=(new_key("h"), *extra)).id)
    key = new_key("browser")
    failed_id = app.send_task("dl.once", args=(key, 21)).id
    record = wait_record(store, failed_id)
    assert wait_final(client, failed_id)["status"] == "FAILURE"

    page.goto(console.base + "/dead-letters")
    assert "/login" in page.url
    shoot(page, "login")
    log_in(page, console, OPERATOR_TOKEN)
    wait_for(
        "the groups to be counted",
        lambda: page.reload() or "By hour ·" in page.inner_text("main"),
        timeout=15,
        interval=0.5,
    )
    row = page.locator(f"a[href='/dead-letters/{record.id}']")
    assert row.count() == 1
    assert "hunter2-secret" not in page.content()
    shoot(page, "dead-letters")

    row.click()
    page.wait_for_url(console.base + f"/dead-letters/{record.id}")
    text = page.inner_text("main")
    assert "dl.once" in text
    assert f"Permanent: first run of {key} fails" in text
    assert "Traceback" in text
    shoot(page, "dead-letter")

    page.click("#replay")
    page.wait_for_selector("text=1 replayed")
    new_id = page.inner_text("td.new-id").strip()
    assert new_id != failed_id
    page.click("td.new-id a")
    page.wait_for_url(console.base + f"/tasks/{new_id}")
    wait_for(
        "the replayed task to succeed, seen in the browser",
        lambda: page.reload() or page.inner_text("#state") == "SUCCESS",
        timeout=20,
        interval=0.3,
    )
    shoot(page, "replayed-task")
    assert app.AsyncResult(new_id).get(timeout=5) == 42  # the replay ran on the worker: dl.once(key, 21) = 42
    assert list(store.iter(Filter(ids=(record.id or "",)))) == []

    page.goto(console.base + "/activity")
    assert "replay" in page.inner_text("table")
    shoot(page, "activity")
    page.goto(console.base + "/policies")
    assert "dl.crash" in page.inner_text("table")
    shoot(page, "policies")
    page.goto(console.base + "/policies/dl.transient")
    assert "Retry schedule: task" in page.inner_text("main")
    shoot(page, "policy")
    page.goto(console.base + "/fleet")
    page.wait_for_selector("text=as expected")
    shoot(page, "fleet")


def test_the_browser_is_refused_without_a_token_and_a_post_without_csrf(
    page: Page, console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    record = wait_record(store, app.send_task("dl.permanent", args=(new_key("nocsrf"),)).id)
    page.goto(console.base + f"/dead-letters/{record.id}")
    assert page.url.startswith(console.base + "/login")
    page.fill("#token", "not-the-token-at-all")
    page.click("button[type=submit]")
    assert "unknown token" in page.inner_text("main")

    log_in(page, console, OPERATOR_TOKEN)
    # the logged-in browser's own cookie, a form POST without the CSRF field
    answer = page.request.post(
        console.base + f"/dead-letters/{record.id}/replay",
        form={"confirm": "1"},
        headers={"Origin": console.base},
    )
    assert answer.status == 403
    assert answer.text() == "CSRF token missing or wrong\n"
    assert [r.id for r in store.iter(Filter(ids=(record.id or "",)))] == [record.id]


def test_the_read_only_role_has_no_replay_button_and_cannot_post_one(
    page: Page, console: Console, worker: WorkerProcess, app: Celery, store: RedisStreamStore
) -> None:
    record = wait_record(store, app.send_task("dl.permanent", args=(new_key("ro"),)).id)
    log_in(page, console, READONLY_TOKEN)
    page.goto(console.base + f"/dead-letters/{record.id}")
    assert "dl.permanent" in page.inner_text("h1")
    assert page.locator("#replay").count() == 0
    assert page.locator("text=Replay matching").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
    assert len(csrf) > 20  # the session's token, taken from the page
    answer = page.request.post(
        console.base + f"/dead-letters/{record.id}/replay", form={"csrf": csrf}, headers={"Origin": console.base}
    )
    assert answer.status == 403
    assert answer.text() == "this action needs the operator role\n"
    assert [r.id for r in store.iter(Filter(ids=(record.id or "",)))] == [record.id]
