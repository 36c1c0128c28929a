"""One reading of retry budgets: the runtime's classifier, ``explain`` and the lint rules agree."""

from __future__ import annotations

from celery_policy.budgets import budgets, rule_budget, unknown_budget
from celery_policy.explain import schedules
from celery_policy.model import RetryPolicy
from celery_policy.runtime.classify import Classifier


def _retry(rule: dict[str, object], **task: object) -> RetryPolicy:
    return RetryPolicy.model_validate(
        {
            "on": ["builtins.TimeoutError"],
            "max_retries": 3,
            "rules": [{"on": ["builtins.ConnectionError"], **rule}],
            **task,
        }
    )


def test_an_explicit_null_in_a_rule_is_no_cap_for_runtime_explain_and_lint() -> None:
    retry = _retry({"max_retries": None})

    assert rule_budget(retry, retry.rules[0]) is None
    assert Classifier(retry, {}).classify(ConnectionError).max_retries is None
    assert schedules(retry)[1].uncapped
    assert [b.label for b in budgets(retry) if b.retries is None] == ["retry.rules[0]"]


def test_a_rule_without_max_retries_inherits_the_task_cap_everywhere() -> None:
    retry = _retry({})

    assert rule_budget(retry, retry.rules[0]) == 3
    assert Classifier(retry, {}).classify(ConnectionError).max_retries == 3
    assert schedules(retry)[1].max_retries == 3
    assert all(b.retries == 3 for b in budgets(retry))


def test_unknown_errors_use_their_own_cap_else_the_task_cap() -> None:
    own = RetryPolicy.model_validate({"unknown": "retry", "max_retries": 3, "unknown_max_retries": 1})
    inherited = RetryPolicy.model_validate({"unknown": "retry", "max_retries": 3})

    assert (unknown_budget(own), unknown_budget(inherited)) == (1, 3)
    assert Classifier(own, {}).classify(KeyError).max_retries == 1
    assert Classifier(inherited, {}).classify(KeyError).max_retries == 3


def test_unknown_errors_get_the_lower_of_their_cap_and_a_lowered_task_cap() -> None:
    """An overlay's `max_retries: 0` ("no retries in development") holds for unknown errors too."""
    lowered = RetryPolicy.model_validate({"unknown": "retry", "max_retries": 0, "unknown_max_retries": 2})
    uncapped = RetryPolicy.model_validate({"unknown": "retry", "max_retries": None, "unknown_max_retries": 2})

    assert (unknown_budget(lowered), unknown_budget(uncapped)) == (0, 2)
    assert Classifier(lowered, {}).classify(KeyError).max_retries == 0
    assert [b.counter for b in budgets(lowered)] == []


def test_a_rule_backoff_overrides_only_the_fields_it_sets() -> None:
    retry = _retry({"backoff": {"initial": 10}}, backoff={"initial": 1, "factor": 3, "max": 60})

    (rule,) = [b for b in budgets(retry) if b.rule_index == 0]
    assert (rule.backoff.initial, rule.backoff.factor, rule.backoff.max) == (10.0, 3.0, 60.0)
    assert Classifier(retry, {}).classify(ConnectionError).backoff == rule.backoff
