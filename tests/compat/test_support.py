"""The boot gate for the Celery and kombu internals celery-policy relies on (celery_policy/support.py).

On every line of the support matrix (noxfile.py) the installed releases must be
tested lines with every probe passing. The gate's answers for releases outside
those lines are tested by making the installed release look like another one
(its version, or one moved internal), since only one release is installed at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu.transport import redis as kombu_redis

import celery_policy
from celery_policy import support
from celery_policy.errors import PolicyError
from celery_policy.transport import RELIABLE_TRANSPORT

pytestmark = pytest.mark.compat

LATE_ACK = "version: 1\ndefaults:\n  ack: {late: true}\n"
ASKED = "version: 1\ndefaults:\n  ack: {late: true}\nworker:\n  reliable_fetch: true\n"


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("gate", broker="redis://127.0.0.1:1/0", set_as_current=False)  # nothing connects at install()
    yield app
    app.close()


def policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def pretend(monkeypatch: pytest.MonkeyPatch, name: str, version: str) -> None:
    real = support.installed

    def installed(which: str) -> support.Release:
        return support.Release(which, version) if which == name else real(which)

    monkeypatch.setattr(support, "installed", installed)


def test_the_installed_celery_and_kombu_are_tested_lines_with_every_probe_passing() -> None:
    celery, kombu = support.installed("celery"), support.installed("kombu")
    assert celery.is_tested_line, celery
    assert kombu.is_tested_line, kombu
    assert support.celery_problems() == []
    assert support.kombu_redis_problems() == []
    assert support.kombu_hub_problems() == []
    assert support.reliable_fetch_problem() is None


def test_install_switches_a_late_ack_redis_app_to_reliable_fetch_on_a_tested_kombu(app: Celery, tmp_path: Path) -> None:
    celery_policy.install(app, policy_file(tmp_path, LATE_ACK))
    assert app.conf.broker_transport == RELIABLE_TRANSPORT


def test_an_untested_kombu_leaves_reliable_fetch_off_with_a_warning_when_the_policy_did_not_ask(
    app: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pretend(monkeypatch, "kombu", "5.99.0")
    with caplog.at_level(logging.WARNING, logger="celery_policy.transport"):
        celery_policy.install(app, policy_file(tmp_path, LATE_ACK))
    assert app.conf.broker_transport != RELIABLE_TRANSPORT
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "celery_policy.transport"]
    assert "reliable fetch left off" in warning
    assert "kombu 5.99.0 is not a tested release line (tested: 5.3.7, 5.4.2, 5.5.4, 5.6.2, 5.7.0)" in warning


def test_an_untested_kombu_stops_the_boot_when_the_policy_asks_for_reliable_fetch(
    app: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pretend(monkeypatch, "kombu", "5.99.0")
    path = policy_file(tmp_path, ASKED)
    with pytest.raises(PolicyError) as caught:
        celery_policy.install(app, path)
    message = str(caught.value)
    assert message.startswith(f"{path}:5:19: worker.reliable_fetch is on, but kombu 5.99.0 is not a tested release")
    assert "help: install a tested kombu" in message
    assert app.conf.broker_transport != RELIABLE_TRANSPORT  # nothing was changed


def test_a_kombu_whose_poller_no_longer_calls_the_take_entry_point_is_named_at_boot(
    app: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def register_brpop(self: object, channel: object) -> None:  # a release that polls some other way
        return None

    monkeypatch.setattr(kombu_redis.MultiChannelPoller, "_register_BRPOP", register_brpop)
    assert support.kombu_redis_problems() == ["MultiChannelPoller._register_BRPOP no longer calls Channel._brpop_start"]
    with pytest.raises(PolicyError, match=r"changed the Redis transport internals it relies on: MultiChannelPoller"):
        celery_policy.install(app, policy_file(tmp_path, ASKED))


def test_an_untested_celery_stops_the_boot_unless_the_operator_accepts_it(
    app: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pretend(monkeypatch, "celery", "6.0.0")
    path = policy_file(tmp_path, LATE_ACK)
    with pytest.raises(PolicyError, match=r"celery 6\.0\.0 is not a tested release line \(tested: 5\.3\.6, "):
        celery_policy.install(app, path)

    monkeypatch.setenv("CELERY_POLICY_ALLOW_UNTESTED_CELERY", "1")
    with caplog.at_level(logging.WARNING, logger="celery_policy"):
        celery_policy.install(app, path)
    assert any("celery 6.0.0 is not a tested release line" in r.getMessage() for r in caplog.records)


def test_a_kombu_hub_without_the_ready_queue_turns_the_rabbitmq_ack_step_off_at_boot_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kombu.asynchronous import Hub

    from celery_policy.runtime.eventloop import RunReadyBeforePoll

    amqp = Celery("amqp-probe", broker="amqp://guest:guest@127.0.0.1:5672//", set_as_current=False)
    celery_policy.install(amqp, policy_file(tmp_path, LATE_ACK))
    assert RunReadyBeforePoll in amqp.steps["consumer"]  # on a tested kombu the step is there

    monkeypatch.delattr(Hub, "_pop_ready")
    assert support.kombu_hub_problems() == ["kombu.asynchronous.Hub._pop_ready"]
    changed = Celery("amqp-probe-2", broker="amqp://guest:guest@127.0.0.1:5672//", set_as_current=False)
    with caplog.at_level(logging.WARNING, logger="celery_policy.runtime"):
        celery_policy.install(changed, policy_file(tmp_path, LATE_ACK))
    assert RunReadyBeforePoll not in changed.steps["consumer"]
    (warning,) = [r.getMessage() for r in caplog.records if "event-loop internals" in r.getMessage()]
    assert "kombu.asynchronous.Hub._pop_ready" in warning
    assert "tested: 5.3.7, 5.4.2, 5.5.4, 5.6.2, 5.7.0" in warning
