"""The runtime's classifier reads the exception's MRO: ``rules`` first, then ``never``/``on``, then ``unknown``.

README ("Command line"): "Failures are classified by the exception's MRO (`rules` first, then `never`/`on`,
then `unknown`)". The worker tests raise classes that are listed by name; these cases raise subclasses, so
they fail if classification compares names or exact types instead of walking the MRO.
"""

from __future__ import annotations

from celery_policy.model import RetryPolicy
from celery_policy.runtime.classify import Action, Classifier


def _classifier(**retry: object) -> Classifier:
    return Classifier(RetryPolicy.model_validate({"max_retries": 3, **retry}), {})


def test_a_subclass_of_a_listed_class_follows_that_list() -> None:
    classifier = _classifier(on=["builtins.OSError"], never=["builtins.LookupError"], unknown="fail")

    retried = classifier.classify(ConnectionResetError)  # ConnectionResetError -> ConnectionError -> OSError
    failed = classifier.classify(KeyError)  # KeyError -> LookupError

    assert (retried.action, retried.counter, retried.source_path) == (Action.RETRY, "on", "retry.on")
    assert (failed.action, failed.reason, failed.source_path) == (Action.FAIL, "permanent", "retry.never")


def test_the_nearest_listed_class_in_the_mro_wins_and_never_wins_a_tie() -> None:
    broad_on = _classifier(on=["builtins.OSError"], never=["builtins.ConnectionError"])
    broad_never = _classifier(on=["builtins.ConnectionError"], never=["builtins.OSError"])
    both = _classifier(on=["builtins.ConnectionError"], never=["builtins.ConnectionError"])

    assert broad_on.classify(ConnectionResetError).action is Action.FAIL  # ConnectionError is nearer than OSError
    assert broad_on.classify(TimeoutError).action is Action.RETRY  # an OSError that is no ConnectionError
    assert broad_never.classify(ConnectionResetError).action is Action.RETRY
    assert broad_never.classify(FileNotFoundError).action is Action.FAIL
    assert both.classify(BrokenPipeError).action is Action.FAIL  # equal distance: never beats on


def test_rules_come_before_never_and_on_and_the_nearest_rule_wins() -> None:
    classifier = _classifier(
        on=["builtins.ConnectionError"],
        never=["builtins.ConnectionResetError"],
        rules=[
            {"on": ["builtins.OSError"], "max_retries": 7},
            {"on": ["builtins.ConnectionError"], "max_retries": 9},
        ],
    )

    reset = classifier.classify(ConnectionResetError)  # listed in never, but both rules match: nearest rule wins
    timeout = classifier.classify(TimeoutError)  # only the OSError rule matches

    assert (reset.action, reset.counter, reset.max_retries) == (Action.RETRY, "r1", 9)
    assert (timeout.action, timeout.counter, timeout.max_retries) == (Action.RETRY, "r0", 7)


def test_an_exception_in_no_list_follows_unknown() -> None:
    retrying = _classifier(on=["builtins.OSError"], unknown="retry", unknown_max_retries=2)
    failing = _classifier(on=["builtins.OSError"], unknown="fail")

    retried = retrying.classify(KeyError)
    failed = failing.classify(KeyError)

    assert (retried.action, retried.counter, retried.max_retries) == (Action.RETRY, "unknown", 2)
    assert (failed.action, failed.reason) == (Action.FAIL, "unknown")
