"""The flow-control blocks of the policy file: breakers, limits, per-task breaker/limit/snooze."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celery_policy import PolicyError, load
from celery_policy.durations import DurationError, parse_rate

POLICY = """\
version: 1
errors:
  transient: [builtins.ConnectionError]
breakers:
  payments:
    on: [transient]
    failure_rate: 50%
    min_calls: 10
    window: 10s
    open_for: 5s
    half_open_calls: 2
limits:
  payments_api: {rate: 40/s, burst: 5}
tasks:
  shop.charge:
    breaker: payments
    snooze: {deadline: 1h}
  shop.sync:
    limit: payments_api
environments:
  production:
    breakers:
      payments: {open_for: 30s}
    limits:
      payments_api: {rate: 100/m}
"""


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def test_the_issue_surface_loads_with_every_field(tmp_path: Path) -> None:
    policy = load(_write(tmp_path, POLICY))
    breaker = policy.document.breakers["payments"]
    assert (breaker.on, breaker.failure_rate, breaker.min_calls) == (["transient"], 0.5, 10)
    assert (breaker.window, breaker.open_for, breaker.half_open_calls) == (10.0, 5.0, 2)
    limit = policy.document.limits["payments_api"]
    assert (limit.per_second, limit.burst) == (40.0, 5)
    charge = policy.for_task("shop.charge").policy
    assert (charge.breaker, charge.limit, charge.snooze.deadline) == ("payments", None, 3600.0)
    assert policy.for_task("shop.sync").policy.limit == "payments_api"


def test_an_environment_overlay_merges_into_a_breaker_field_by_field(tmp_path: Path) -> None:
    policy = load(_write(tmp_path, POLICY), env="production")
    breaker = policy.document.breakers["payments"]
    assert breaker.open_for == 30.0
    assert breaker.failure_rate == 0.5  # kept from the base file
    assert policy.document.limits["payments_api"].per_second == pytest.approx(100 / 60)
    assert policy.document.limits["payments_api"].burst == 5


def test_breaker_and_limit_names_resolve_through_defaults_and_globs(tmp_path: Path) -> None:
    text = POLICY.replace("tasks:\n", "defaults:\n  breaker: payments\ntasks:\n  'shop.*': {limit: payments_api}\n", 1)
    policy = load(_write(tmp_path, text))
    other = policy.for_task("shop.refund")
    assert (other.policy.breaker, other.policy.limit) == ("payments", "payments_api")
    assert other.source_of("limit").layer == 'tasks."shop.*"'


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("40/s", 40.0), ("100/m", 100 / 60), ("5/10s", 0.5), ("1000/h", 1000 / 3600), ("3/sec", 3.0)],
)
def test_rates_parse_to_tokens_per_second(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["40", "40/", "/s", "40/sx", "0/s", "40/0s", "forty/s"])
def test_unparsable_rates_are_refused(text: str) -> None:
    with pytest.raises(DurationError, match="is not a rate"):
        parse_rate(text)


def test_an_unparsable_rate_points_at_its_line_with_cp120(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load(_write(tmp_path, POLICY.replace("rate: 40/s", "rate: 40 per second")))
    (found,) = caught.value.diagnostics
    assert (found.code, found.location.line if found.location else None) == ("CP130", 13)
    assert found.path == "limits.payments_api.rate"
    assert found.hint is not None
    assert "40/s" in found.hint


def test_an_unknown_key_in_a_breaker_gets_a_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load(_write(tmp_path, POLICY.replace("open_for: 5s", "open_fro: 5s")))
    (found,) = caught.value.diagnostics
    assert found.code == "CP102"
    assert found.hint == "did you mean 'open_for'?"


@pytest.mark.parametrize(("field", "value"), [("failure_rate", "150%"), ("failure_rate", "0"), ("min_calls", "0")])
def test_out_of_range_breaker_values_are_schema_errors(tmp_path: Path, field: str, value: str) -> None:
    text = POLICY.replace("    min_calls: 10\n", f"    min_calls: 10\n    {field}: {value}\n").replace(
        "    failure_rate: 50%\n" if field == "failure_rate" else "    min_calls: 10\n", "", 1
    )
    with pytest.raises(PolicyError) as caught:
        load(_write(tmp_path, text))
    assert [d.code for d in caught.value.diagnostics] == ["CP101"]


def test_a_breaker_on_list_names_importable_exceptions(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load(_write(tmp_path, POLICY.replace("on: [transient]", "on: [builtins.NoSuchError]")))
    assert [d.code for d in caught.value.diagnostics] == ["CP107"]
    assert caught.value.diagnostics[0].path == "breakers.payments.on[0]"


def test_explain_shows_the_breaker_the_limit_and_the_snooze_budget(tmp_path: Path) -> None:
    from celery_policy.explain import explain
    from celery_policy.explain_report import render_json, render_text

    text = POLICY.replace(
        "  shop.sync:\n    limit: payments_api\n", "  shop.sync:\n    limit: payments_api\n  shop.plain: {}\n"
    )
    text = text.replace("    snooze: {deadline: 1h}\n", "    limit: payments_api\n    retry: {on: [transient]}\n")
    policy = load(_write(tmp_path, text))
    report = render_text(explain(policy, "shop.charge"))
    assert "breaker payments: opens at 50% failures of at least 10 calls in 10s, stays open 5s, then 2 probes" in report
    assert "counts: [transient] (breaker.on)" in report
    assert "limit payments_api: 40/s for the fleet, burst 5" in report
    assert "for up to 1h (default)" in report
    data = json.loads(render_json(explain(policy, "shop.charge")))
    assert (data["flow"]["breaker"], data["flow"]["limit"]) == ("payments", "payments_api")
    plain = explain(policy, "shop.plain")
    assert plain.flow is None
    assert not [f for f in plain.fields if f.section in ("breaker", "limit", "snooze")]


def test_the_fleet_fingerprint_covers_breaker_settings_and_ignores_unused_flow_fields(tmp_path: Path) -> None:
    from celery_policy.fleet import snapshot

    base = load(_write(tmp_path, POLICY))
    longer = load(_write(tmp_path, POLICY.replace("open_for: 5s", "open_for: 6s")))
    tasks = ["shop.charge", "shop.plain"]
    assert snapshot(base, tasks).fingerprint != snapshot(longer, tasks).fingerprint
    assert snapshot(base, tasks).settings["breakers"]["payments.open_for"] == 5.0
    fields = snapshot(base, tasks).tasks
    assert fields["shop.charge"]["breaker"] == "payments"
    assert not [key for key in fields["shop.plain"] if key.split(".")[0] in ("breaker", "limit", "snooze")]


@pytest.mark.parametrize(
    ("exc_type", "counted"),
    [(ConnectionResetError, True), (TimeoutError, True), (ValueError, False), (UnicodeDecodeError, False)],
)
def test_a_breaker_counts_its_on_list_by_mro_and_the_task_never_list_wins(
    tmp_path: Path, exc_type: type[BaseException], counted: bool
) -> None:
    from celery_policy.runtime.flow import FlowGate
    from celery_policy.runtime.task_runtime import TaskRuntime

    text = POLICY.replace("on: [transient]", "on: [builtins.Exception]").replace(
        "  shop.charge:\n", "  shop.charge:\n    retry: {never: [builtins.ValueError]}\n"
    )
    resolved = load(_write(tmp_path, text)).for_task("shop.charge")
    runtime = TaskRuntime(resolved)
    gate = FlowGate(runtime, None, None, ["builtins.Exception"], resolved.policy.retry.never, resolved.groups)
    assert gate.counts(exc_type) is counted


def test_a_worker_does_not_boot_with_an_unknown_breaker_name(tmp_path: Path) -> None:
    from celery import Celery

    import celery_policy

    text = POLICY.replace("    breaker: payments\n", "    breaker: paymnets\n")
    path = _write(tmp_path, text + "flow_store: {url: 'redis://127.0.0.1:1/0'}\n")
    app = Celery("boot", broker="memory://", task_cls=celery_policy.PolicyTask)

    def charge() -> None:
        return None

    app.task(charge, name="shop.charge")
    app.finalize()
    with pytest.raises(
        PolicyError, match=r"(?s)policy.yaml:16:5: CP131 error: unknown breaker 'paymnets' .*did you mean 'payments'"
    ):
        celery_policy.install(app, path)
    from celery_policy.runtime.install import runtime_for

    assert runtime_for(app) is None  # nothing was applied
