"""``celery-policy check --app`` against a reachable RabbitMQ: an existing queue declared with other arguments."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kombu.connection import Connection
from support.harness import amqp_message_count

from celery_policy.cli import main

if TYPE_CHECKING:
    from support.rabbit import RabbitVhost

pytest_plugins = ["support.rabbit"]  # rabbit_broker, rabbit_vhost, fresh_vhost


def test_check_reports_an_existing_queue_with_other_arguments_and_creates_nothing(
    fresh_vhost: RabbitVhost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = f"lint_rabbit_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('lint', broker={fresh_vhost.url!r}, set_as_current=False)\n"
        "@app.task(name='mail.send', shared=False)\n"
        "def send() -> None: ...\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "defaults:\n"
        "  route: {queue_type: quorum}\n"
        "  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 2}\n"
        "  timeout: {hard: 1m}\n"
        "tasks:\n"
        "  mail.send: {route: {queue: mail}}\n"
    )
    with Connection(fresh_vhost.url) as connection:  # type: ignore[no-untyped-call]
        connection.default_channel.queue_declare("mail", durable=True, auto_delete=False)  # classic, from before
    monkeypatch.chdir(tmp_path)

    code = main(["check", str(policy), "--app", module, "--format", "json"])

    findings = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["code"] == "CP307"]
    assert code == 1
    assert len(findings) == 1, findings
    assert findings[0]["line"] == 7  # tasks.mail.send: the task routing to the queue
    assert (
        "queue 'mail' already exists on the broker with other arguments than the policy needs" in findings[0]["message"]
    )
    assert (
        "the policy sets x-delivery-limit from tasks.mail.send, x-queue-type from tasks.mail.send"
        in findings[0]["message"]
    )
    assert "rabbitmqctl delete_queue mail" in findings[0]["hint"]
    # only read: the default queue and the dead queues were not created
    with Connection(fresh_vhost.url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.connection.channel()
        with pytest.raises(Exception, match="NOT_FOUND"):
            channel.queue_declare("celery", passive=True)
    assert amqp_message_count(fresh_vhost.url, "mail") == 0
