"""The Decision record: what the policy decided about one failed attempt (a leaf: imports nothing of ours)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Decision"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decided about one failed attempt. Hooks receive it."""

    action: str  # "retry" | "fail" | "dead_letter" | "requeue" | "snooze"
    task: str
    task_id: str | None
    attempt: int  # 1-based number of the attempt that failed
    max_retries: int | None  # budget of the counter that applied
    countdown: float | None
    exc_type: str
    # exhausted | unknown_exhausted | permanent | unknown | deadline | time_limit | redelivery_limit | None for retries
    # breaker_open | rate_limited (a snooze, or a give-up past snooze.deadline / snooze.max)
    reason: str | None
    policy_source: str
    # the policy field that decided: "retry.on", "retry.rules[0]", "retry.unknown", "retry.never", "timeout.hard"
    rule: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
