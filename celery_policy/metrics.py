"""Prometheus metrics of policy decisions (extra ``metrics``: ``pip install 'celery-policy[metrics]'``).

Counters move only when the policy decides something (a retry, a final failure,
a dead letter, a redelivery cap, a replay); a task that succeeds touches none of
them. Names follow celery-exporter's style (``celery_`` prefix, ``task`` and
``exception`` labels), so its dashboards sit next to ours:

- ``celery_policy_retries_total{task,exception,rule}``: retries scheduled; ``rule`` is the policy
  field that decided (``retry.on``, ``retry.rules[0]``, ``retry.unknown``);
- ``celery_policy_failures_total{task,exception,reason}``: final failures, dead-lettered or not;
- ``celery_policy_dead_lettered_total{task,exception,reason}``: final failures written to the store;
- ``celery_policy_redelivery_capped_total{task}``: messages stopped by ``ack.max_redeliveries``;
- ``celery_policy_replayed_total{task,outcome}``: dead letters replayed (``published``, ``failed``,
  ``skipped``), counted by the process that replays (the web console);
- ``celery_policy_info{fingerprint,env,version}`` = 1: the policy a worker runs, for drift alerts.

In a worker the counters live in prometheus_client's multiprocess files: every
pool process writes its own, and the endpoint in the main process sums them
(:mod:`celery_policy.runtime.prometheus` sets that up).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from celery_policy.runtime.decision import Decision

INSTALL_HINT = "prometheus_client is not installed; run: pip install 'celery-policy[metrics]'"


@dataclass(frozen=True, slots=True)
class CounterSpec:
    name: str  # without the _total suffix, as prometheus_client names counters
    documentation: str
    labels: tuple[str, ...]


RETRIES = CounterSpec("celery_policy_retries", "Retries the policy scheduled", ("task", "exception", "rule"))
FAILURES = CounterSpec(
    "celery_policy_failures", "Final failures of tasks, dead-lettered or not", ("task", "exception", "reason")
)
DEAD_LETTERED = CounterSpec(
    "celery_policy_dead_lettered", "Final failures written to the dead-letter store", ("task", "exception", "reason")
)
REDELIVERY_CAPPED = CounterSpec(
    "celery_policy_redelivery_capped", "Messages stopped by ack.max_redeliveries (poison pills)", ("task",)
)
REPLAYED = CounterSpec("celery_policy_replayed", "Dead letters replayed, by outcome", ("task", "outcome"))
COUNTERS = (RETRIES, FAILURES, DEAD_LETTERED, REDELIVERY_CAPPED, REPLAYED)
INFO = "celery_policy_info"


def require_prometheus_client() -> Any:
    """The ``prometheus_client`` module; ImportError with the install command when it is missing."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return prometheus_client


def decision_counts(decision: Decision) -> list[tuple[CounterSpec, tuple[str, ...]]]:
    """The counters one decision moves, with their label values (pure: no prometheus_client needed)."""
    exception = decision.exc_type
    if decision.action == "retry":
        return [(RETRIES, (decision.task, exception, decision.rule or ""))]
    if decision.action not in ("fail", "dead_letter"):
        return []  # "requeue": a hard time limit put the message back; nothing was decided yet
    reason = decision.reason or ""
    found: list[tuple[CounterSpec, tuple[str, ...]]] = [(FAILURES, (decision.task, exception, reason))]
    if decision.action == "dead_letter":
        found.append((DEAD_LETTERED, (decision.task, exception, reason)))
    if reason == "redelivery_limit":
        found.append((REDELIVERY_CAPPED, (decision.task,)))
    return found


class MultiprocessCounters:
    """Counters kept in prometheus_client's multiprocess files (``$PROMETHEUS_MULTIPROC_DIR``).

    The values are made with :func:`prometheus_client.values.MultiProcessValue`
    directly, not through ``Counter``: that way these counters are multiprocess
    whatever mode the application's own prometheus_client metrics are in. A forked
    pool process notices its new pid and writes a file of its own.
    """

    def __init__(self) -> None:
        from prometheus_client import values

        self._value_class = values.MultiProcessValue()  # type: ignore[no-untyped-call]  # untyped in 0.2x
        self._values: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()

    def inc(self, spec: CounterSpec, labels: tuple[str, ...], amount: float = 1.0) -> None:
        key = (spec.name, labels)
        with self._lock:
            value = self._values.get(key)
            if value is None:
                value = self._value_class(
                    "counter", spec.name, spec.name + "_total", spec.labels, labels, spec.documentation
                )
                self._values[key] = value
            value.inc(amount)

    def record(self, decision: Decision, exc: BaseException | None = None) -> None:
        """A decision sink (see :func:`celery_policy.runtime.observability.add_sink`)."""
        for spec, labels in decision_counts(decision):
            self.inc(spec, labels)


class ProcessCounters:
    """Ordinary prometheus_client counters in one registry, for a single process (the web console)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter

        self._counters = {
            spec.name: Counter(spec.name, spec.documentation, spec.labels, registry=registry) for spec in COUNTERS
        }

    def inc(self, spec: CounterSpec, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self._counters[spec.name].labels(*labels).inc(amount)


class InfoCollector:
    """``celery_policy_info{fingerprint,env,version} 1``, read from ``source`` at every scrape."""

    def __init__(self, source: Callable[[], dict[str, str] | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            INFO, "The policy this process runs (fingerprint as in celery-policy status)", labels=INFO_LABELS
        )
        found = self.source()
        if found is not None:
            family.add_metric([found.get(label, "") for label in INFO_LABELS], 1.0)
        yield family


INFO_LABELS = ("fingerprint", "env", "version")


class GaugeCollector:
    """Gauges computed at scrape time: ``source`` returns ``{label values: value}``."""

    def __init__(
        self, name: str, documentation: str, labels: Iterable[str], source: Callable[[], dict[tuple[str, ...], float]]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, value in sorted(self.source().items()):
            family.add_metric(list(values), value)
        yield family
