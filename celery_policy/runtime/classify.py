"""Exception -> outcome, by the exception's MRO, compiled once at boot.

Order of precedence (DESIGN.md "Rules of the model"):
1. ``retry.rules`` apply before the task-level lists; among rules the one
   naming the most specific class of the MRO wins (first rule on a tie).
2. Then ``never`` and ``on``: the most specific listed class wins; at equal
   distance ``never`` beats ``on``.
3. Anything else is "unknown" and follows ``retry.unknown``.

Celery's control-flow exceptions never get here: the run wrapper re-raises
``TaskPredicate`` (``Retry``, ``Ignore``, ``Reject``) before classifying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from celery_policy.budgets import rule_budgets, unknown_budget
from celery_policy.model import Backoff, RetryPolicy
from celery_policy.references import expand_refs, import_exception


class Action(str, Enum):
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with one exception type, before looking at the retry budget."""

    action: Action
    counter: str  # header counter name: "on", "unknown", "r<index>", or "" for FAIL
    max_retries: int | None  # budget of that counter; None = uncapped
    backoff: Backoff
    delay_from: str | None = None
    reason: str = "permanent"  # reason if the budget is spent / the action is FAIL
    source_path: str = "retry.on"  # field that decided, for provenance in logs


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    index: int
    classes: tuple[type[BaseException], ...]
    outcome: Outcome


class Classifier:
    """Maps exception types to :class:`Outcome`; memoised per type (a dict lookup on the hot path)."""

    def __init__(self, retry: RetryPolicy, groups: dict[str, list[str]]) -> None:
        self._on = _classes(expand_refs(retry.on, groups))
        self._never = _classes(expand_refs(retry.never, groups))
        self._rules: list[_CompiledRule] = []
        for index, (budget, rule) in enumerate(zip(rule_budgets(retry), retry.rules, strict=True)):
            outcome = Outcome(
                Action.RETRY,
                budget.counter,
                budget.retries,
                budget.backoff,
                budget.delay_from,
                "exhausted",
                budget.label,
            )
            self._rules.append(_CompiledRule(index, _classes(expand_refs(rule.on, groups)), outcome))
        self._retry_on = Outcome(Action.RETRY, "on", retry.max_retries, retry.backoff, None, "exhausted", "retry.on")
        self._fail = Outcome(Action.FAIL, "", 0, retry.backoff, None, "permanent", "retry.never")
        if retry.unknown == "retry":
            limit = unknown_budget(retry)
            self._unknown = Outcome(
                Action.RETRY, "unknown", limit, retry.backoff, None, "unknown_exhausted", "retry.unknown"
            )
        else:
            self._unknown = Outcome(Action.FAIL, "", 0, retry.backoff, None, "unknown", "retry.unknown")
        self._cache: dict[type[BaseException], Outcome] = {}

    @property
    def retries_anything(self) -> bool:
        """False when no exception can ever be retried (the wrapper can then skip classifying)."""
        return bool(self._on or self._rules) or self._unknown.action is Action.RETRY

    def classify(self, exc_type: type[BaseException]) -> Outcome:
        found = self._cache.get(exc_type)
        if found is None:
            found = self._cache[exc_type] = self._decide(exc_type)
        return found

    def _decide(self, exc_type: type[BaseException]) -> Outcome:
        mro = exc_type.__mro__
        best_rule: tuple[int, int] | None = None  # (distance, rule index)
        for rule in self._rules:
            distance = _distance(mro, rule.classes)
            if distance is not None and (best_rule is None or distance < best_rule[0]):
                best_rule = (distance, rule.index)
        if best_rule is not None:
            return self._rules[best_rule[1]].outcome
        never = _distance(mro, self._never)
        on = _distance(mro, self._on)
        if never is not None and (on is None or never <= on):
            return self._fail
        if on is not None:
            return self._retry_on
        return self._unknown


def _distance(mro: Sequence[type], classes: Sequence[type[BaseException]]) -> int | None:
    best: int | None = None
    for cls in classes:
        try:
            distance = mro.index(cls)
        except ValueError:
            continue
        if best is None or distance < best:
            best = distance
    return best


def _classes(refs: Sequence[str]) -> tuple[type[BaseException], ...]:
    return tuple(import_exception(ref) for ref in refs)
