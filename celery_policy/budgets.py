"""The retry counters of a task policy, read alike by the runtime, ``explain`` and the lint rules.

A task has up to three kinds of counter, each with its own budget:

- ``on``: exceptions in ``retry.on``, budget ``retry.max_retries``;
- ``unknown``: exceptions in neither ``on`` nor ``never`` when ``retry.unknown`` is
  ``retry``, budget the lower of ``retry.unknown_max_retries`` and ``retry.max_retries``;
- ``r<index>``: each ``retry.rules`` entry, budget its own ``max_retries`` when the
  rule sets the key (an explicit ``null`` means no cap), else ``retry.max_retries``;
  backoff: the fields the rule sets over the task's.

A budget of ``None`` is no cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery_policy.model import Backoff, RetryPolicy, RetryRule


@dataclass(frozen=True, slots=True)
class Budget:
    """One retry counter of a task."""

    counter: str  # the counter's name in the message headers: "on", "unknown", "r<index>"
    label: str  # how findings and logs name it: "retry.on", "unknown errors", "retry.rules[0]"
    retries: int | None  # None: no cap
    backoff: Backoff
    delay_from: str | None = None
    rule_index: int | None = None  # the `rules` entry, or None for the task-level counters


def rule_budget(retry: RetryPolicy, rule: RetryRule) -> int | None:
    """A rule's ``max_retries``: its own when it sets the key (``null`` = no cap), else the task's."""
    # model_fields_set, not truthiness or `is None`: an explicit `max_retries: null` is a real value.
    return rule.max_retries if "max_retries" in rule.model_fields_set else retry.max_retries


def rule_backoff(task_backoff: Backoff, rule: RetryRule) -> Backoff:
    """The backoff a rule uses: the fields it sets, the task's for the rest."""
    if rule.backoff is None:
        return task_backoff
    return task_backoff.model_copy(update=rule.backoff.model_dump(exclude_unset=True))


def unknown_budget(retry: RetryPolicy) -> int | None:
    """The budget of unknown exceptions (when ``retry.unknown`` is ``retry``): the lower of
    ``unknown_max_retries`` and ``max_retries``, so a layer that lowers ``max_retries`` (``max_retries: 0``
    in development) lowers it for unknown errors too; ``None`` (no cap) yields to the other."""
    if retry.unknown_max_retries is None:
        return retry.max_retries
    if retry.max_retries is None:
        return retry.unknown_max_retries
    return min(retry.unknown_max_retries, retry.max_retries)


def rule_budgets(retry: RetryPolicy) -> list[Budget]:
    """One :class:`Budget` per ``retry.rules`` entry, in order."""
    return [
        Budget(
            f"r{index}",
            f"retry.rules[{index}]",
            rule_budget(retry, rule),
            rule_backoff(retry.backoff, rule),
            rule.delay_from,
            index,
        )
        for index, rule in enumerate(retry.rules)
    ]


def budgets(retry: RetryPolicy) -> list[Budget]:
    """The counters that can retry: ``on`` (when it lists anything), ``unknown`` (when unknown errors
    retry), then each rule; counters with a budget of 0 are left out."""
    found: list[Budget] = []
    if retry.on:
        found.append(Budget("on", "retry.on", retry.max_retries, retry.backoff))
    if retry.unknown == "retry":
        found.append(Budget("unknown", "unknown errors", unknown_budget(retry), retry.backoff))
    found.extend(rule_budgets(retry))
    return [budget for budget in found if budget.retries != 0]
