"""The deployment rules read `worker.delayed_delivery` when the model has it (CP220, CP223), and the app's
settings through the snapshot; these tests cover what the YAML fixtures cannot express."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _lintkit import APPS

import celery_policy.lint.rules
import celery_policy.transport
from celery_policy.lint.appsnapshot import load_app
from celery_policy.lint.context import LintContext
from celery_policy.lint.registry import RULES
from celery_policy.loader import parse_policy_text
from celery_policy.model import PolicyDocument, WorkerSettings

POLICY = """\
version: 1
defaults:
  retry: {on: [builtins.TimeoutError], max_retries: 20, backoff: {max: 1h}}
  ack: {late: true}
worker: {visibility_timeout: 2h}
"""


class _WithDelayedDelivery(WorkerSettings):
    """The worker settings as a model that has `delayed_delivery` (the rules read it with getattr)."""

    delayed_delivery: bool | None = None


def _context(app: str, *, delayed_delivery: bool | None, reliable_fetch: bool | None = None) -> LintContext:
    raw = parse_policy_text(POLICY, "policy.yaml")
    document = PolicyDocument.model_validate(raw.data)
    worker = _WithDelayedDelivery(
        **document.worker.model_dump(exclude_unset=True),
        delayed_delivery=delayed_delivery,
        reliable_fetch=reliable_fetch,
    )
    return LintContext(document.model_copy(update={"worker": worker}), raw.source, raw, app=load_app(app, str(APPS)))


@pytest.mark.parametrize(
    ("delayed_delivery", "reliable_fetch", "fires"),
    [(None, None, False), (None, False, True), (False, None, True), (True, False, False)],
)
def test_eta_rule_leaves_retries_alone_that_delayed_delivery_keeps_out_of_the_worker(
    delayed_delivery: bool | None, reliable_fetch: bool | None, fires: bool
) -> None:
    """Unset, delayed delivery follows reliable fetch (on with late ack on Redis), as the design says."""
    ctx = _context("lintapp_redis", delayed_delivery=delayed_delivery, reliable_fetch=reliable_fetch)
    found = list(RULES["CP223"].run(ctx))
    assert bool(found) is (fires and ctx.app is not None and ctx.app.has_setting((5, 6))), found


def test_delayed_delivery_counts_only_on_the_brokers_the_transport_supports(monkeypatch: Any) -> None:
    ctx = _context("lintapp_amqp", delayed_delivery=True)
    assert [d.message for d in RULES["CP220"].run(ctx)]  # Redis-only delayed delivery does not hold RabbitMQ retries
    monkeypatch.setattr(celery_policy.transport, "DELAYED_DELIVERY_BROKERS", ("redis", "amqp"), raising=False)
    assert list(RULES["CP220"].run(ctx)) == []


def test_snapshot_reads_the_deployment_settings(in_apps_dir: Path) -> None:
    sqs = load_app("lintapp_deploy:sqs")
    soft_shutdown = 0.0 if sqs.has_setting((5, 5)) else None  # Celery's default, or no such setting before 5.5
    assert (sqs.broker_scheme, sqs.soft_shutdown_timeout_s, sqs.eta_task_limit) == ("sqs", soft_shutdown, None)
    assert sqs.celery_version[:1] == (5,)
    short = load_app("lintapp_deploy:dedupe_short")
    assert (short.deduplicate_successful_tasks, short.result_expires_s) == (True, 600.0)
    timeout = load_app("lintapp_deploy:amqp_timeout")
    assert timeout.declared_queues is not None
    assert timeout.declared_queues["celery"].consumer_timeout_s == 7200.0
