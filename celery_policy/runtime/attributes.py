"""The Celery task attributes a resolved policy sets (time limits, acks, retry cap, rate limit)."""

from __future__ import annotations

from typing import Any

from celery_policy.resolve import ResolvedPolicy

__all__ = ["celery_attributes"]


def celery_attributes(resolved: ResolvedPolicy, has_split_acks: bool) -> dict[str, Any]:
    """Task attributes for the fields the policy sets; where it is silent, Celery's own values stand.

    ``has_split_acks``: the Celery in use has ``acks_on_failure``/``acks_on_timeout`` (5.7+).
    """
    policy = resolved.policy
    attrs: dict[str, Any] = {}

    def is_set(path: str) -> bool:
        return resolved.source_of(path).layer != "builtin"

    if is_set("timeout.soft"):
        attrs["soft_time_limit"] = policy.timeout.soft
    if is_set("timeout.hard"):
        attrs["time_limit"] = policy.timeout.hard
    if is_set("timeout.expires"):
        attrs["expires"] = policy.timeout.expires
    if is_set("ack.late"):
        attrs["acks_late"] = policy.ack.late
    if is_set("ack.reject_on_worker_lost"):
        attrs["reject_on_worker_lost"] = policy.ack.reject_on_worker_lost
    if is_set("ack.on_failure_or_timeout"):
        attrs["acks_on_failure_or_timeout"] = policy.ack.on_failure_or_timeout
        if has_split_acks:  # Celery 5.7 reads these two and derives them before annotations run
            attrs["acks_on_failure"] = policy.ack.on_failure_or_timeout
            attrs["acks_on_timeout"] = policy.ack.on_failure_or_timeout
    if policy.retry.self_retry == "policy":
        # only where the policy was asked to drive the task's own self.retry() does it change the task's cap;
        # the retries the policy decides pass their own budget to every retry call
        attrs["max_retries"] = policy.retry.max_retries
    if is_set("rate_limit"):
        attrs["rate_limit"] = policy.rate_limit
    return attrs
