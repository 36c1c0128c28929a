"""The console's parts on their own: tokens, bind and Host rules, and the group index over a real Redis stream."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.servers import RedisServer, wait_for

from celery_policy.deadletter.record import DeadLetter, Reason
from celery_policy.deadletter.store import Filter, RedisStreamStore
from celery_policy.web.data import GroupIndex, read_page
from celery_policy.web.security import HostPolicy, TokenError, Tokens, check_bind, load_tokens

HOUR = 3600


def test_tokens_come_from_files_before_the_environment(tmp_path: Path) -> None:
    operator = tmp_path / "operator"
    operator.write_text("file-operator-token-1234\n")
    env = {
        "CELERY_POLICY_WEB_TOKEN": "env-operator-token-1234",
        "CELERY_POLICY_WEB_READONLY_TOKEN": "env-ro-token-12345",
    }
    tokens = load_tokens(str(operator), None, env)
    assert tokens == Tokens("file-operator-token-1234", "env-ro-token-12345")
    assert tokens.role_of("file-operator-token-1234") == "operator"
    assert tokens.role_of("env-ro-token-12345") == "readonly"
    assert tokens.role_of("env-operator-token-1234") is None
    assert tokens.role_of("") is None
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(TokenError, match="is empty"):
        load_tokens(str(empty), None, {})
    with pytest.raises(TokenError, match="the operator and read-only tokens are the same"):
        load_tokens(None, None, {"CELERY_POLICY_WEB_TOKEN": "x" * 20, "CELERY_POLICY_WEB_READONLY_TOKEN": "x" * 20})


def test_only_a_loopback_bind_runs_without_a_token() -> None:
    none = Tokens()
    assert check_bind("127.0.0.1", none) is None
    assert check_bind("::1", none) is None
    assert check_bind("localhost", none) is None
    assert check_bind("10.0.0.5", none) is not None
    assert check_bind("0.0.0.0", none) is not None
    assert check_bind("0.0.0.0", Tokens(readonly="r" * 20)) is None


def test_the_host_header_must_name_the_console() -> None:
    local = HostPolicy("127.0.0.1", 8808)
    assert local.allows("127.0.0.1:8808")
    assert local.allows("localhost:8808")
    assert local.allows("[::1]:8808")
    assert not local.allows("127.0.0.1:9999")
    assert not local.allows("evil.example:8808")
    assert not local.allows(None)
    public = HostPolicy("10.0.0.5", 8808, ("console.example.com",))
    assert public.allows("console.example.com")
    assert not public.allows("localhost:8808")


def _record(task: str, reason: Reason, at: float) -> DeadLetter:
    return DeadLetter(
        task=task, task_id=None, reason=reason, exc_type="builtins.ValueError", first_failure=at, last_failure=at
    )


def test_the_group_index_counts_keeps_up_and_recounts_after_outside_deletes(clean_redis: RedisServer) -> None:
    store = RedisStreamStore(clean_redis.url, "web:dead")
    now = time.time()
    for i in range(30):
        store.add(_record(f"t{i % 3}", "permanent" if i % 2 else "exhausted", now - (i % 4) * HOUR))
    index = GroupIndex(store, batch=7, refresh_every_s=0)
    index.start()
    view = wait_for("the first count", lambda: index.view(Filter()) if index.view(Filter()).complete else None)
    assert view.total == 30
    assert sum(g.count for g in view.groups if g.task == "t0") == 10
    assert len(view.hours) == 4
    assert index.view(Filter(task="t1", reason="permanent")).total == 5

    store.add(_record("t9", "deadline", now))
    index.refresh()  # reads only the new entry
    assert index.view(Filter(task="t9")).total == 1

    (oldest,) = list(store.iter(Filter(task="t0"), limit=1))
    store.delete(oldest.id or "")  # behind the index's back (the CLI)
    index.refresh()
    view = wait_for("the recount", lambda: index.view(Filter()) if index.view(Filter()).complete else None)
    assert view.total == 30
    assert index.totals()[("t9", "deadline")] == 1


def test_a_page_reads_newest_first_and_pages_with_a_cursor(clean_redis: RedisServer) -> None:
    store = RedisStreamStore(clean_redis.url, "web:dead")
    now = time.time()
    for i in range(25):
        store.add(_record("a" if i % 5 else "b", "exhausted", now - 25 + i))
    first = read_page(store, Filter(task="a"), size=10)
    assert [r.last_failure for r in first.records] == sorted((r.last_failure for r in first.records), reverse=True)
    assert len(first.records) == 10
    second = read_page(store, Filter(task="a"), before=first.older, size=10)
    assert len(second.records) == 10
    assert not {r.id for r in first.records} & {r.id for r in second.records}
    last = read_page(store, Filter(task="a"), before=second.older, size=10)
    assert (len(last.records), last.older) == (0, None)
