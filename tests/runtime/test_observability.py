"""celery_policy.observability: structlog set-up, OpenTelemetry span events and Sentry breadcrumbs on decisions.

Most tasks run through Celery's real execution path (``Task.apply``) with the policy installed, and one
test runs a real worker (tests/support/apps/obs/obsapp.py), where retries are messages run after their countdown;
OpenTelemetry records into its in-memory span exporter and Sentry into a transport that keeps
the envelopes it is given. structlog and Sentry configure process-wide state, so those cases
run in a fresh interpreter.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.servers import wait_for

from celery_policy.runtime.observability import SPAN_EVENT

POLICY = """\
version: 1
defaults:
  retry:
    on: [builtins.TimeoutError]
    never: [builtins.ValueError]
    max_retries: 2
    backoff: {initial: 10ms, max: 10ms, jitter: none}
"""

APP = """\
from celery import Celery
import celery_policy

app = Celery("obs", broker="memory://", task_cls=celery_policy.PolicyTask)

@app.task(name="obs.boom", shared=False)
def boom(kind):
    if kind == "slow":
        raise TimeoutError("upstream slow")
    raise ValueError("bad input")

celery_policy.install(app, {policy!r})
"""


# The start of a script that records what Sentry would send (``sent``: the events' JSON), with no network.
SENTRY_RECORDING = textwrap.dedent(
    """
    import json
    import sentry_sdk
    from sentry_sdk.transport import Transport

    sent = []

    class Recording(Transport):
        def capture_envelope(self, envelope):
            for item in envelope.items:
                if item.type == "event":
                    sent.append(item.payload.json)

    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Recording, default_integrations=False)
    """
)


def run_script(tmp_path: Path, body: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(prelude + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )


def sentry_crumbs(tmp_path: Path, body: str) -> list[dict[str, Any]]:
    """Run ``body`` after SENTRY_RECORDING, send one event, and return its celery-policy breadcrumbs."""
    done = run_script(
        tmp_path,
        textwrap.dedent(body) + 'sentry_sdk.capture_message("after")\nsentry_sdk.flush()\nprint(json.dumps(sent))\n',
        prelude=SENTRY_RECORDING,
    )
    assert done.returncode == 0, done.stderr
    (event,) = json.loads(done.stdout.strip().splitlines()[-1])
    return [c for c in event["breadcrumbs"]["values"] if c["category"] == "celery_policy"]


@pytest.fixture
def app(tmp_path: Path) -> Celery:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    namespace: dict[str, Any] = {"__name__": "obsapp_inline"}
    exec(APP.format(policy=str(policy)), namespace)  # the same module text the subprocess cases import
    app: Celery = namespace["app"]
    return app


def test_each_decision_is_an_event_on_the_current_span(app: Celery) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("run/obs.boom"):
        result = app.tasks["obs.boom"].apply(args=("slow",))
    assert result.state == "FAILURE"
    (span,) = exporter.get_finished_spans()
    events = [e for e in span.events if e.name == SPAN_EVENT]
    assert [e.attributes["celery_policy.decision"] for e in events] == ["retry", "retry", "fail"]  # type: ignore[index]
    last = events[-1].attributes
    assert last is not None
    assert last["celery_policy.task"] == "obs.boom"
    assert last["celery_policy.attempt"] == 3
    assert last["celery_policy.reason"] == "exhausted"
    assert last["exception.type"] == "builtins.TimeoutError"
    assert last["exception.message"] == "upstream slow"
    assert "celery_policy.countdown" not in last  # None values are left out (OTel attributes cannot be None)
    assert events[0].attributes["celery_policy.countdown"] == pytest.approx(0.01)  # type: ignore[index]


def test_no_span_no_event_and_the_task_outcome_is_unchanged(app: Celery) -> None:
    result = app.tasks["obs.boom"].apply(args=("bad",))
    assert result.state == "FAILURE"
    assert isinstance(result.result, ValueError)


def test_decisions_become_sentry_breadcrumbs(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "obsapp.py").write_text(APP.format(policy="policy.yaml"))
    crumbs = sentry_crumbs(
        tmp_path,
        """
        from obsapp import app
        app.tasks["obs.boom"].apply(args=("slow",))
        """,
    )
    assert [c["data"]["celery_policy.decision"] for c in crumbs] == ["retry", "retry", "fail"]
    assert [c["level"] for c in crumbs] == ["warning", "warning", "error"]
    assert crumbs[0]["message"] == "obs.boom: retry in 0.01s after attempt 1 (builtins.TimeoutError)"
    assert crumbs[-1]["data"]["celery_policy.reason"] == "exhausted"


def test_a_breaker_state_change_becomes_a_sentry_breadcrumb(tmp_path: Path) -> None:
    """README (breakers): each change of state is a ``breaker_state_changed`` event and a Sentry breadcrumb."""
    crumbs = sentry_crumbs(
        tmp_path,
        """
        from celery_policy.flow.state import BreakerState
        from celery_policy.runtime.flow import breaker_event
        common = dict(since=1.0, calls=10, failures=6, verdict="wait", forced=False, rate_at_open=0.6)
        breaker_event(BreakerState("payments", "open", open_remaining_s=5.0, changed_to="open", **common), "auto")
        breaker_event(BreakerState("payments", "closed", open_remaining_s=0.0, changed_to="closed", **common), "auto")
        """,
    )
    assert [(c["message"], c["level"]) for c in crumbs] == [
        ("breaker payments: open", "warning"),
        ("breaker payments: closed", "info"),
    ]
    assert crumbs[0]["data"]["celery_policy.breaker"] == "payments"


def test_decisions_do_not_import_sentry_for_an_app_that_did_not(tmp_path: Path) -> None:
    """sentry_sdk is installed here; importing it on the first failure cost a worker ~120 modules and ~6 MB.

    (opentelemetry.trace is not checked: redis-py 7 imports it whenever it is installed.)
    """
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "obsapp.py").write_text(APP.format(policy="policy.yaml"))
    done = run_script(
        tmp_path,
        """
        import importlib.util, json, sys
        from obsapp import app
        result = app.tasks["obs.boom"].apply(args=("slow",))
        print(json.dumps([result.state, bool(importlib.util.find_spec("sentry_sdk")), "sentry_sdk" in sys.modules]))
        """,
    )
    assert done.returncode == 0, done.stderr
    state, installed, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert state == "FAILURE"  # two retry decisions and a fail decision were made
    assert installed
    assert not imported


def test_configure_logging_renders_json_or_key_value_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "obsapp.py").write_text(APP.format(policy="policy.yaml"))
    body = """
        import sys
        from celery_policy.observability import configure_logging
        assert configure_logging({fmt!r}) is True
        from obsapp import app
        app.tasks["obs.boom"].apply(args=("bad",))
        """
    done = run_script(tmp_path, body.format(fmt="json"))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    decision = next(e for e in events if e["event"] == "policy_decision")
    assert decision["level"] == "error"
    assert decision["decision"] == "fail"
    assert decision["reason"] == "permanent"
    assert decision["timestamp"].endswith("Z")
    assert "policy_decision" not in done.stdout  # stdout stays free for command output

    done = run_script(tmp_path, body.format(fmt="kv"))
    line = next(line for line in done.stderr.splitlines() if "policy_decision" in line)
    assert line.startswith("timestamp=")
    assert "level='error' event='policy_decision'" in line
    assert "decision='fail'" in line

    # no format given, stderr is a pipe (not a terminal): JSON; $CELERY_POLICY_LOG_FORMAT overrides
    done = run_script(tmp_path, body.format(fmt=None))
    assert any(line.startswith("{") and "policy_decision" in line for line in done.stderr.splitlines())


def test_an_existing_structlog_configuration_is_kept(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "obsapp.py").write_text(APP.format(policy="policy.yaml"))
    done = run_script(
        tmp_path,
        """
        import structlog
        structlog.configure(processors=[lambda _l, _m, event: "MINE " + event["event"]],
                            logger_factory=structlog.PrintLoggerFactory())
        from celery_policy.observability import configure_logging
        print("configured:", configure_logging("json"))
        from obsapp import app
        app.tasks["obs.boom"].apply(args=("bad",))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "configured: False" in done.stdout
    assert "MINE policy_decision" in done.stdout


@pytest.mark.worker
def test_a_real_worker_reports_each_decision_to_opentelemetry_and_sentry(
    clean_redis: Any, celery_worker_process: Any, tmp_path: Path
) -> None:
    """A solo worker: each retry is a new message run after its countdown, each run its own span."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("10ms, max: 10ms", "300ms, max: 300ms"))
    env = {"CELERY_POLICY_FILE": str(policy), "OBS_JOURNAL_URL": clean_redis.url}
    root = Path(__file__).resolve().parents[2]
    celery_worker_process("tests.support.apps.obs.obsapp", broker_url=clean_redis.url, cwd=root, env=env)
    Celery("obs-producer", broker=clean_redis.url).send_task("obs.boom", args=("slow",))
    client = clean_redis.client()

    spans = wait_for("three finished runs", lambda: client.llen("obs:spans") >= 3 and client.lrange("obs:spans", 0, -1))
    runs = [json.loads(raw) for raw in spans]
    decisions = [[e["celery_policy.decision"] for e in run["events"] if "celery_policy.decision" in e] for run in runs]
    assert decisions == [["retry"], ["retry"], ["fail"]]  # one run, one span, one decision
    assert runs[0]["events"][0]["celery_policy.countdown"] == pytest.approx(0.3)
    assert runs[-1]["events"][0]["celery_policy.reason"] == "exhausted"
    starts = [run["start"] for run in runs]
    assert all(later - earlier >= 0.3 - 0.02 for earlier, later in itertools.pairwise(starts)), starts  # countdowns

    (event,) = [json.loads(raw) for raw in wait_for("the Sentry event", lambda: client.lrange("obs:sentry", 0, -1))]
    crumbs = [c for c in event["breadcrumbs"]["values"] if c["category"] == "celery_policy"]
    assert [c["data"]["celery_policy.decision"] for c in crumbs] == ["retry", "retry", "fail"]
    assert crumbs[0]["message"] == "obs.boom: retry in 0.3s after attempt 1 (builtins.TimeoutError)"
