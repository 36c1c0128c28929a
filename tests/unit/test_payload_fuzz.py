"""Task payloads that break templating or rendering: always a key or a clear error, never a crash.

Hypothesis feeds random arguments (nested, huge, odd keys and types) to the two places
that format user data on the worker: the idempotency key template and the argument
renderer used for logs and dead-letter records.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_policy.model import IdempotencyPolicy, LogPolicy
from celery_policy.runtime.events import ArgRenderer, scrub
from celery_policy.runtime.idempotency import MAX_KEY_CHARS, PREFIX, IdempotencyGuard, IdempotencyKeyError

TEMPLATES = [
    "charge:{kwargs[order_id]}",
    "{task}:{args[0]}",
    "{args[1]}-{kwargs[user][id]}",
    "{kwargs[n]:08d}",
    "{args[0].attr}",
    "fixed",
    "{kwargs[order_id]!r}:{args}",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
    st.text(min_size=2000, max_size=3000), st.binary(max_size=20),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
keyword = st.sampled_from(["order_id", "user", "n", "password", "token", "Card_Number", "x", ""]) | st.text(max_size=8)


def _guard(template: str) -> IdempotencyGuard:
    # register_script needs a client object; no command is sent by key_for.
    client = redis.Redis(host="127.0.0.1", port=1)
    return IdempotencyGuard(IdempotencyPolicy(key=template), "orders.charge", client, 60.0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(TEMPLATES),
    args=st.lists(values, max_size=4),
    kwargs=st.dictionaries(keyword, values, max_size=5),
)
def test_an_idempotency_key_is_a_bounded_string_or_a_clear_error(
    template: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    guard = _guard(template)
    try:
        key = guard.key_for(args, kwargs)
    except IdempotencyKeyError as exc:
        error = str(exc)
    else:
        assert key.startswith(PREFIX + "{")
        assert key.endswith("}")
        assert len(key) <= len(PREFIX) + MAX_KEY_CHARS + 2
        return
    assert "cannot be formatted" in error
    assert len(error) <= 500


PARAMS = ["user", "password"]  # the task's parameter names, as the renderer reads them from the signature


def expected_secrets(mode: str, keys: set[str], args: list[Any], kwargs: dict[str, Any]) -> set[str]:
    """What must never show, worked out here from the policy's rules, not from the renderer's own list.

    Under ``redact``: every str/int leaf (4+ characters) under a parameter, keyword or nested key named in
    ``redact_keys`` (case-insensitive); under ``hide``: every such leaf; under ``show``: nothing.
    """
    found: set[str] = set()

    def walk(value: Any, secret: bool, depth: int) -> None:
        if depth > 8:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, secret or str(k).lower() in keys, depth + 1)
        elif isinstance(value, list):
            for v in value:
                walk(v, secret, depth + 1)
        elif secret and isinstance(value, (str, int)) and not isinstance(value, bool) and len(str(value)) >= 4:
            found.add(str(value))

    if mode == "show":
        return found
    for index, value in enumerate(args):
        walk(value, mode == "hide" or (index < len(PARAMS) and PARAMS[index] in keys), 0)
    for key, value in kwargs.items():
        walk(value, mode == "hide" or key.lower() in keys, 0)
    return found


@pytest.mark.parametrize("mode", ["show", "redact", "hide"])
@settings(max_examples=80, deadline=None)
@given(args=st.lists(values, max_size=4), kwargs=st.dictionaries(keyword, values, max_size=5))
def test_rendering_arguments_never_raises_and_stays_json(mode: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    policy = LogPolicy(args=mode)
    renderer = ArgRenderer(policy, lambda: PARAMS)
    rendered = renderer.render(args, kwargs)
    json.dumps(rendered, default=str)  # the decision event and the record carry it as JSON
    expected = expected_secrets(mode, {k.lower() for k in policy.redact_keys}, args, kwargs)
    # "***" itself (or stars around it) can reappear next to a masked value: such values prove nothing
    expected = {secret for secret in expected if "*" not in secret}
    assert expected <= set(renderer.secrets(args, kwargs))
    # an exception message quoting the arguments is masked by the renderer's list
    masked = scrub(json.dumps([args, kwargs], default=str), renderer.secrets(args, kwargs))
    assert not [secret for secret in expected if secret in masked]
    if mode == "hide":
        assert rendered == {}


def test_a_known_password_is_among_the_secrets_and_masked() -> None:
    """The oracle above is not vacuous: a password keyword gives a secret under redact."""
    renderer = ArgRenderer(LogPolicy(args="redact"), lambda: PARAMS)
    kwargs = {"password": "hunter22", "order": {"Token": 123456}, "note": "x"}
    assert expected_secrets("redact", {"password", "token"}, ["alice"], kwargs) == {"hunter22", "123456"}
    assert {"hunter22", "123456"} <= set(renderer.secrets(["alice"], kwargs))
    assert scrub("bad password hunter22 for 123456", renderer.secrets(["alice"], kwargs)) == "bad password *** for ***"
