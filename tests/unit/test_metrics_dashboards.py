"""The Grafana dashboard and the Prometheus alert rules query metrics and labels that celery-policy exports.

README ("Metrics and the web console") ships docs/grafana/celery-policy-dashboard.json and
docs/prometheus/celery-policy-alerts.yaml for dead-letter rate, poison pills, retry storms and drift. A
renamed counter or label would leave those panels and alerts silently empty; this test reads every query.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from celery_policy.metrics import COUNTERS, INFO, INFO_LABELS

DOCS = Path(__file__).resolve().parents[2] / "docs"
# the store gauge is served by the web console's /metrics (celery_policy/web/app.py)
EXPORTED = {
    **{spec.name + "_total": set(spec.labels) for spec in COUNTERS},
    INFO: set(INFO_LABELS),
    "celery_policy_dead_letters": {"task", "reason"},
}
METRIC = re.compile(r"\bcelery_policy_[a-z_]+\b")


def _strings(node: Any, key: str) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _strings(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, key)


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DOCS / "grafana" / "celery-policy-dashboard.json").read_text(encoding="utf-8"))
    variables = [v["query"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return [*_strings(dashboard["panels"], "expr"), *variables]


def _alerts() -> dict[str, str]:
    rules = yaml.safe_load((DOCS / "prometheus" / "celery-policy-alerts.yaml").read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def _unknown_names(query: str) -> list[str]:
    """Metrics the query names that nothing exports, and labels it groups or filters by that they lack."""
    metrics = METRIC.findall(query)
    problems = [m for m in metrics if m not in EXPORTED]
    labels: set[str] = set().union(*(EXPORTED[m] for m in metrics if m in EXPORTED))
    used = {label for group in re.findall(r"\bby \(([^)]*)\)", query) for label in re.split(r"\s*,\s*", group)}
    used |= set(re.findall(r"\{([a-z_]+)=~?", query))
    used |= {label for _, label in re.findall(r"label_values\((\w+),\s*(\w+)\)", query)}
    problems += [f"label {label!r}" for label in sorted(used - labels)]
    return problems


def test_every_dashboard_panel_and_variable_queries_an_exported_metric_and_its_labels() -> None:
    queries = _dashboard_queries()

    assert len(queries) >= 9
    assert all(METRIC.search(q) for q in queries), queries
    assert {q: _unknown_names(q) for q in queries if _unknown_names(q)} == {}


def test_the_alert_rules_cover_dead_letters_poison_pills_retry_storms_and_drift_with_exported_metrics() -> None:
    alerts = _alerts()

    assert {name: _unknown_names(expr) for name, expr in alerts.items() if _unknown_names(expr)} == {}
    watched = {m for expr in alerts.values() for m in METRIC.findall(expr)}
    assert {
        "celery_policy_dead_lettered_total",  # dead-letter rate
        "celery_policy_redelivery_capped_total",  # poison pills
        "celery_policy_retries_total",  # retry storms
        "celery_policy_info",  # drift
    } <= watched
