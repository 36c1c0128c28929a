# Celery's task decorator and signals are untyped:
# mypy: disable-error-code="untyped-decorator,no-untyped-call"
"""A worker app that reports policy decisions to OpenTelemetry and Sentry, and writes what they received to Redis.

Each task run is a span (started at ``task_prerun``, as an instrumentation would); the span
exporter pushes every finished span's policy events to ``obs:spans``. Sentry is initialised
with a transport that pushes each event it sends to ``obs:sentry``; after a task's final
failure the app captures a message, whose breadcrumbs are the decisions recorded so far.

Environment: CELERY_BROKER_URL, CELERY_POLICY_FILE, OBS_JOURNAL_URL (where the records go).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import redis
import sentry_sdk
from celery import Celery
from celery.signals import task_failure, task_postrun, task_prerun
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from sentry_sdk.transport import Transport

import celery_policy

journal = redis.Redis.from_url(os.environ["OBS_JOURNAL_URL"])


class RedisSpanExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            events = [dict(e.attributes or {}) for e in span.events]
            start = (span.start_time or 0) / 1e9
            journal.rpush("obs:spans", json.dumps({"name": span.name, "start": start, "events": events}))
        return SpanExportResult.SUCCESS


class RedisTransport(Transport):
    def capture_envelope(self, envelope: Any) -> None:
        for item in envelope.items:
            if item.type == "event":
                journal.rpush("obs:sentry", json.dumps(item.payload.json))


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(RedisSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("obsapp")
sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=RedisTransport, default_integrations=False)

app = Celery("obsapp", broker=os.environ["CELERY_BROKER_URL"], task_cls=celery_policy.PolicyTask)
app.conf.broker_connection_retry_on_startup = True
celery_policy.install(app)

_open: dict[str, tuple[Any, object]] = {}


@task_prerun.connect
def _start_span(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    span = tracer.start_span(f"run/{task.name}")
    _open[str(task_id)] = (span, context.attach(trace.set_span_in_context(span)))


@task_postrun.connect
def _end_span(task_id: str | None = None, **_: Any) -> None:
    span, token = _open.pop(str(task_id))
    context.detach(token)  # type: ignore[arg-type]
    span.end()


@task_failure.connect
def _report(task_id: str | None = None, **_: Any) -> None:
    sentry_sdk.capture_message(f"task {task_id} failed")
    sentry_sdk.flush()


@app.task(name="obs.boom")
def boom(kind: str) -> None:
    if kind == "slow":
        raise TimeoutError("upstream slow")
    raise ValueError("bad input")
